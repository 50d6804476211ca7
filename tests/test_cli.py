"""The operator and developer commands: db install (idempotent, relay's objects only), token,
db touch, watch; every expected failure of a tool is one line, never a traceback."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from relay.auth import verify_token
from relay.schema import install_schema
from tests.support import ROOT, SECRET, ProcessOutput, RelayProcess, execute, free_port


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "WEBSOCKET_JWT_SECRET")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_db_install_is_idempotent(postgres_url: str) -> None:
    for _ in range(2):
        result = _relay_cli("db", "install", DATABASE_URL=postgres_url)
        assert result.returncode == 0, result.stderr
        assert "applied 001_relay_schema.sql" in result.stdout


def test_token_has_the_endpoints_claims() -> None:
    result = _relay_cli("token", "--user-id", "42", "--ttl", "120", WEBSOCKET_JWT_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    claims = verify_token(result.stdout.strip(), SECRET.encode())
    assert claims.user_id == "42"


@pytest.mark.skipif((ROOT / ".relay-dev" / "secret").exists(),
                    reason="`make run` left a development secret, which `token` uses")
def test_token_without_a_secret_names_the_variable() -> None:
    result = _relay_cli("token", "--user-id", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "relay: configuration error: WEBSOCKET_JWT_SECRET: required but not set")


@pytest.mark.slow
def test_db_touch_fires_the_trigger(relay: RelayProcess, postgres_url: str) -> None:
    client = relay.connect("cli-user")
    result = _relay_cli("db", "touch", "--user-id", "cli-user", "--plan", "team",
                        DATABASE_URL=postgres_url)
    assert result.returncode == 0, result.stderr
    update = client.expect("update")
    assert update["table"] == "subscription"
    assert update["data"]["row"]["plan"] == "team"
    client.close()


def test_development_banner_prints_no_token(capsys: pytest.CaptureFixture[str]) -> None:
    from relay.dev.run import _banner

    _banner("3000", {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
                     "WEBSOCKET_JWT_SECRET": SECRET})
    out = capsys.readouterr().out
    assert "relay watch" in out
    assert "token=" not in out
    assert not any(part.startswith("eyJ") for part in out.split())  # no JWT of any kind


def test_development_secret_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    from relay.dev.run import _write_private

    old_umask = os.umask(0)  # a permissive umask must not leak the secret either
    try:
        _write_private(tmp_path / "secret", "s" * 64 + "\n")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):  # never silently rewrites an existing secret
        _write_private(tmp_path / "secret", "t" * 64 + "\n")


def _public_tables(url: str) -> set[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {name for (name,) in cur.fetchall()}
    conn.close()
    return tables


@pytest.mark.slow
def test_db_install_installs_relays_functions_and_no_example_tables(empty_database: str) -> None:
    result = _relay_cli("db", "install", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    assert "applied 003_relay_install.sql" in result.stdout
    assert "example" not in result.stdout.replace("db trigger", "")
    assert _public_tables(empty_database) == set()  # an app's database gets no demo tables
    with psycopg2.connect(empty_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regprocedure('relay_notify()') IS NOT NULL")
        assert cur.fetchone() == (True,)
    conn.close()


@pytest.mark.slow
def test_db_install_with_examples_creates_the_demo_tables(empty_database: str) -> None:
    result = _relay_cli("db", "install", "--with-examples", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    assert "applied 010_example_tables.sql" in result.stdout
    assert _public_tables(empty_database) == {"subscription", "usage"}


# ----- relay watch, and one line for every expected failure -----


def _one_line_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class _Watch:
    """``python -m relay watch`` as a person runs it, read line by line."""

    def __init__(self, url: str, user: str, secret: str = SECRET) -> None:
        clean = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "watch", "--url", url, "--user-id", user],
            cwd=ROOT, env={**clean, "WEBSOCKET_JWT_SECRET": secret},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.output = ProcessOutput(self.proc.stdout)

    def message(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (line := self.output.line(max(0.0, deadline - time.monotonic()))) is not None:
            if line.startswith("{") and json.loads(line)["type"] == kind:
                return json.loads(line)
        raise AssertionError(f"relay watch ended before {kind}: {self.stderr()}")

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


@pytest.mark.slow
def test_watch_is_admitted_by_a_relay_with_allowed_origins(relay: RelayProcess,
                                                           postgres_url: str) -> None:
    # relay's ALLOWED_ORIGINS is https://app.example.com, as in production: websocket-client's
    # default Origin (the relay's own URL) would get HTTP 403; relay watch sends none.
    assert relay.env["ALLOWED_ORIGINS"] == "https://app.example.com"
    watch = _Watch(relay.ws_url, "watch-user")
    try:
        assert watch.message("connected")["userId"] == "watch-user"
        execute(postgres_url, "INSERT INTO subscription (user_id, plan) VALUES "
                              "('watch-user', 'watched')")
        assert watch.message("update")["data"]["row"]["plan"] == "watched"
        watch.proc.send_signal(signal.SIGINT)  # Ctrl-C: the way to stop watching
        assert watch.proc.wait(10) == 0
        assert watch.stderr() == ""
    finally:
        watch.proc.kill()
        watch.proc.wait()


@pytest.mark.slow
def test_watch_with_the_wrong_secret_says_so_in_one_line(relay: RelayProcess) -> None:
    watch = _Watch(relay.ws_url, "watch-user", secret="another-secret-" + "x" * 32)
    assert watch.proc.wait(20) == 1
    line = watch.stderr().strip()
    assert line == ("relay: watch: closed by the relay: 4001 bad signature (the token was "
                    "refused: are WEBSOCKET_JWT_SECRET, RELAY_JWT_ISSUER and RELAY_JWT_AUDIENCE "
                    "here the relay's?)")


@pytest.mark.slow
def test_watch_of_a_wrong_path_names_the_http_status(relay: RelayProcess) -> None:
    url = relay.ws_url.replace("/ws", "/nothing-here")
    line = _one_line_failure(_relay_cli("watch", "--url", url, WEBSOCKET_JWT_SECRET=SECRET))
    assert line == (f"relay: watch: {url} refused the WebSocket handshake with HTTP 404 "
                    "(is this relay's /ws URL?)")


def test_watch_refused_with_403_is_one_line() -> None:
    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_error(403)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.server_address[1]}/ws"
        line = _one_line_failure(_relay_cli("watch", "--url", url, WEBSOCKET_JWT_SECRET=SECRET))
        assert line.startswith(f"relay: watch: {url} refused the WebSocket handshake with "
                               "HTTP 403")
    finally:
        server.shutdown()
        server.server_close()


def test_watch_with_nothing_listening_is_one_line() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    line = _one_line_failure(_relay_cli("watch", "--url", url, WEBSOCKET_JWT_SECRET=SECRET))
    assert line == (f"relay: watch: nothing accepts connections at {url} "
                    "(is relay running? make run starts it)")


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000/ws", "127.0.0.1:3000", "ws://"])
def test_watch_of_a_bad_url_is_one_line(url: str) -> None:
    line = _one_line_failure(_relay_cli("watch", "--url", url, WEBSOCKET_JWT_SECRET=SECRET), 2)
    assert line.startswith(f"relay: watch: --url {url!r} is not a WebSocket URL")


@pytest.mark.skipif((ROOT / ".relay-dev" / "secret").exists(),
                    reason="`make run` left a development secret, which `watch` uses")
def test_watch_without_a_secret_names_the_variable() -> None:
    line = _one_line_failure(_relay_cli("watch"), 2)
    assert line == "relay: configuration error: WEBSOCKET_JWT_SECRET: required but not set"


@pytest.mark.parametrize("command", [["db", "install"], ["db", "touch", "--user-id", "1"],
                                     ["db", "trigger", "T", "--channel", "T"]])
def test_database_down_is_one_line(command: list[str]) -> None:
    url = f"postgresql://relay@127.0.0.1:{free_port()}/relay"
    line = _one_line_failure(_relay_cli(*command, DATABASE_URL=url))
    assert line.startswith("relay: cannot use the database: connection to server at "
                           '"127.0.0.1"'), line
    assert "Connection refused" in line


@pytest.mark.slow
def test_db_touch_without_the_example_tables_is_one_line(empty_database: str) -> None:
    install_schema(empty_database)
    line = _one_line_failure(_relay_cli("db", "touch", "--user-id", "1",
                                        DATABASE_URL=empty_database))
    assert "python -m relay db install --with-examples" in line
