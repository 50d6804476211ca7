"""The operator and developer commands: db install (idempotent), token, db touch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from relay.auth import verify_token
from tests.support import ROOT, SECRET, RelayProcess


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "WEBSOCKET_JWT_SECRET")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_db_install_is_idempotent(postgres_url: str) -> None:
    for _ in range(2):
        result = _relay_cli("db", "install", DATABASE_URL=postgres_url)
        assert result.returncode == 0, result.stderr
        assert "applied 001_notify_function.sql" in result.stdout


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
    from relay.cli import _banner

    _banner("3000", {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
                     "WEBSOCKET_JWT_SECRET": SECRET})
    out = capsys.readouterr().out
    assert "relay watch" in out
    assert "token=" not in out
    assert not any(part.startswith("eyJ") for part in out.split())  # no JWT of any kind


def test_development_secret_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    from relay.cli import _write_private

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


def test_db_install_installs_relays_functions_and_no_example_tables(empty_database: str) -> None:
    result = _relay_cli("db", "install", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    assert "applied 001_notify_function.sql" in result.stdout
    assert "example" not in result.stdout.replace("db trigger", "")
    assert _public_tables(empty_database) == set()  # an app's database gets no demo tables
    with psycopg2.connect(empty_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regprocedure('relay_notify()') IS NOT NULL")
        assert cur.fetchone() == (True,)
    conn.close()


def test_db_install_with_examples_creates_the_demo_tables(empty_database: str) -> None:
    result = _relay_cli("db", "install", "--with-examples", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    assert "applied 010_example_tables.sql" in result.stdout
    assert _public_tables(empty_database) == {"subscription", "usage"}
