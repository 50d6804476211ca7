"""``make run`` (``python -m relay dev``): relay on an embedded PostgreSQL, for development.

Checks the port first (one line naming ``PORT`` when it is taken), starts (or reuses) the
embedded cluster in the state directory (``.relay-dev/`` by default), installs the schema
with the demo's tables, makes a secret once (readable by this user only), and runs gunicorn
exactly as production does, with two workers and ``RELAY_DEV`` on (the ``/demo`` page),
until Ctrl-C. The other tools find that database and secret through ``relay.tools``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from relay.config import ConfigError, child_environment
from relay.tools import ROOT, CommandError


def run_dev(port_default: int, state: Path) -> int:
    """`make run`: embedded PostgreSQL, schema, secret, gunicorn with 2 workers, a banner."""
    # Here, not at the top: the tools read make run's state in production too, where the
    # embedded PostgreSQL is never imported.
    from relay.dev.postgres import ensure_dev_database
    from relay.schema import install_schema

    env = child_environment()
    env.setdefault("PORT", str(port_default))
    port = env["PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PORT: expected a port number, got {port!r}")
    _check_port_free(env.get("RELAY_HOST", "").strip() or "127.0.0.1", port)  # dev's bind
    state.mkdir(exist_ok=True)
    server = None
    if not env.get("DATABASE_URL"):
        print(f"relay dev: starting the embedded PostgreSQL in {state / 'pg'} …", flush=True)
        server = ensure_dev_database(state / "pg")
        env["DATABASE_URL"] = server.url
    (state / "database_url").write_text(env["DATABASE_URL"] + "\n")
    install_schema(env["DATABASE_URL"], examples=True)  # the demo's tables
    secret_path = state / "secret"
    if not env.get("WEBSOCKET_JWT_SECRET"):
        if not secret_path.exists():
            _write_private(secret_path, secrets.token_hex(32) + "\n")
        env["WEBSOCKET_JWT_SECRET"] = secret_path.read_text().strip()
    env.setdefault("WEB_CONCURRENCY", "2")
    env.setdefault("RELAY_DEV", "1")
    env.setdefault("ALLOWED_ORIGINS", ",".join(_dev_origins(port)))
    # gunicorn gets a session of its own, so that the terminal's Ctrl-C (sent to the whole
    # foreground process group) reaches only this process: it asks gunicorn to stop, and
    # gunicorn stops its workers, supervisor and listener in order, instead of each of them
    # being interrupted mid-call and printing a traceback. Outside the terminal's group,
    # gunicorn must still never outlive this process (killed, or the terminal closed).
    from relay.supervisor import die_with_parent

    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
        cwd=ROOT, env=env, start_new_session=True, preexec_fn=die_with_parent,
    )
    for received, forwarded in ((signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                (signal.SIGHUP, signal.SIGTERM)):  # a closed terminal: stop
        signal.signal(received, lambda *_, sig=forwarded: gunicorn.send_signal(sig))
    try:
        if _wait_healthy(f"http://127.0.0.1:{port}/health", gunicorn):
            _banner(port, env)
        code = gunicorn.wait()
        return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
    finally:
        if server is not None:  # Ctrl-C stops everything `make run` started
            server.stop()
            print(f"relay dev: embedded PostgreSQL stopped (data kept in {state / 'pg'})")


def _check_port_free(host: str, port: str) -> None:
    """Say which variable to set when the port is taken (often by `next dev`, also on 3000);
    gunicorn alone would retry for a while and then fail with no hint."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError:
            other = int(port) + 1 if int(port) < 65535 else 3001
            raise CommandError(
                f"dev: port {port} is in use by another program (next dev also takes 3000): "
                f"choose another with PORT, e.g. make run PORT={other}", 2) from None


def _dev_origins(port: str) -> list[str]:
    """The browser origins development mode admits: the relay's own (the /demo page) and,
    when relay runs elsewhere, a Next.js app on `next dev`'s default port 3000."""
    ports = dict.fromkeys((port, "3000"))
    return [f"http://{host}:{p}" for p in ports for host in ("localhost", "127.0.0.1")]


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by this user only from its first byte (written, then
    chmod-ed, it was world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _banner(port: str, env: dict[str, str]) -> None:
    # No token URL here: a URL with ?token= ends up in shell history and proxies' logs.
    py = sys.executable
    print(f"""
============================================================================
 relay is running: http://127.0.0.1:{port}/health   (2 workers, 1 listener)
 Live demo page:   http://127.0.0.1:{port}/demo

 Browser origins allowed: {env.get('ALLOWED_ORIGINS') or 'none'}

 1. Watch user 42's updates (in another terminal):
      {py} -m relay watch --url ws://127.0.0.1:{port}/ws --user-id 42

 2. Change user 42's subscription row (fires the trigger):
      {py} -m relay db touch --user-id 42 --plan enterprise
    or in SQL:
      psql "{env['DATABASE_URL']}" -c "UPDATE subscription SET plan='team' WHERE user_id='42'"

 A fresh token: {py} -m relay token --user-id 42
============================================================================
""", flush=True)
