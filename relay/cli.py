"""``python -m relay …``: the processes relay runs, and the operator's and developer's tools.

Process entry points (started by relay itself): ``supervise``, ``listen``.
Tools: ``dev`` (run everything locally on an embedded PostgreSQL), ``token`` (mint a
token exactly like the app's endpoint), ``db install`` (apply relay's ``sql/``), ``db trigger``
(attach relay's trigger to an app's table), ``db touch`` (write a row of the example table so
that a notification fires), ``watch`` (print what a user receives), ``close-codes --js`` (the
JS client's close-code table), ``size`` (machines, settings and monthly cost for a number of
users, from the benchmark's figures: relay/sizing.py).

A tool's expected failures (bad input, database down, relay unreachable or refusing) end
with one line on stderr and a non-zero exit, never a traceback.

Heavy imports stay inside the commands: ``listen`` must monkey-patch gevent before
anything imports ``socket``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from relay.config import ConfigError

# The processes relay runs itself: a failure there is a bug or an outage worth a traceback in
# the logs. Every other command is a tool a person types.
_PROCESSES = ("listen", "supervise")


class CommandError(Exception):
    """An expected failure of a tool; ``str()`` is the one line to print."""

    def __init__(self, line: str, exit_code: int = 1) -> None:
        super().__init__(line)
        self.exit_code = exit_code

ROOT = Path(__file__).resolve().parent.parent
DEV_DIR = ROOT / ".relay-dev"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("listen", help="run the listener (started by the supervisor)")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--instance-started-at", type=float, default=None)
    p = sub.add_parser("supervise", help="keep one listener alive (started by gunicorn)")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--instance-started-at", type=float, default=None)

    p = sub.add_parser("token", help="print a token with the claims the app's endpoint issues")
    p.add_argument("--user-id", required=True)
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    p = sub.add_parser("db", help="database tools")
    db = p.add_subparsers(dest="db_command", required=True)
    i = db.add_parser("install", help="install relay's functions from sql/ (idempotent)")
    i.add_argument("--with-examples", action="store_true",
                   help="also create the demo's example tables (subscription, usage)")
    i.add_argument("--print", dest="print_only", action="store_true",
                   help="only print the SQL (for a migration); needs no database")
    t = db.add_parser(
        "trigger", help="attach relay's trigger to a table (idempotent)",
        description="Create (or with --drop remove) the trigger that notifies "
                    "user_<CHANNEL>_<user id> on every insert, update and delete of TABLE. "
                    "Names are taken exactly as written (case-sensitive, quoted in SQL).")
    t.add_argument("table", metavar="TABLE", help="table name, or SCHEMA.TABLE")
    t.add_argument("--channel", help="channel's table part: Subscription -> "
                                     "user_Subscription_<user id>")
    t.add_argument("--user-column", default="user_id",
                   help="column holding the owner's user id (default user_id)")
    t.add_argument("--id-column", default="id",
                   help="column identifying the row, always sent (default id)")
    t.add_argument("--columns", help="comma-separated columns to send (default: EVERY column "
                                     "of the row reaches the owner's browser)")
    t.add_argument("--drop", action="store_true", help="remove the trigger instead")
    t.add_argument("--print", dest="print_only", action="store_true",
                   help="only print the SQL (for a migration); needs no database")
    t = db.add_parser("touch", help="upsert the example subscription row of a user")
    t.add_argument("--user-id", required=True)
    t.add_argument("--plan", default="pro")

    p = sub.add_parser("watch", help="connect as a user and print every message")
    p.add_argument("--url", default="ws://127.0.0.1:3000/ws")
    p.add_argument("--user-id", default="42")

    p = sub.add_parser("dev", help="run relay locally on an embedded PostgreSQL")
    p.add_argument("--port", type=int, default=3000, help="when PORT is not set (default 3000)")
    p.add_argument("--state-dir", type=Path, default=DEV_DIR,
                   help="where the database, its URL and the secret are kept (.relay-dev)")

    p = sub.add_parser("close-codes", help="print the close-code table")
    p.add_argument("--js", action="store_true", help="as client/src/closeCodes.js")

    from relay import sizing_report

    p = sub.add_parser("size", help="machines, settings and monthly cost for N users "
                                    "(docs/cost.md)")
    sizing_report.add_arguments(p)

    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the person asked to stop, nothing went wrong
        return 130
    except Exception as exc:
        failure = None if args.command in _PROCESSES else _expected_failure(exc)
        if failure is None:
            raise
        print(f"relay: {failure}", file=sys.stderr)
        return failure.exit_code


def _expected_failure(exc: Exception) -> CommandError | None:
    """The one line for a failure a person can fix; None for a bug (keep the traceback)."""
    if isinstance(exc, CommandError):
        return exc
    from relay.triggers import TriggerError

    if isinstance(exc, TriggerError):  # the command line names something that cannot work
        return CommandError(f"db trigger: {exc}", 2)
    import psycopg2

    if isinstance(exc, psycopg2.OperationalError):
        return CommandError(f"cannot use the database: {_first_line(str(exc))}")
    if isinstance(exc, psycopg2.Error):
        return CommandError(f"database error: {_first_line(str(exc))}")
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _listen(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    from relay import logs
    from relay.config import Settings
    from relay.listener.server import run_listener
    from relay.supervisor import die_with_parent

    settings = Settings.from_env()
    logs.configure(settings)
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 0  # the supervisor died while we were starting
    die_with_parent()
    run_listener(settings, args.instance_started_at)
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from relay import logs
    from relay.config import Settings
    from relay.supervisor import run_supervisor

    logs.configure(Settings.from_env())
    return run_supervisor(args.parent_pid, args.instance_started_at)


def _dev_secret() -> bytes | None:
    path = DEV_DIR / "secret"
    return path.read_text().strip().encode() if path.exists() else None


def _token(args: argparse.Namespace) -> int:
    from relay.auth import issue_token
    from relay.config import read_jwt_secret

    if "WEBSOCKET_JWT_SECRET" not in os.environ and _dev_secret():
        secret = _dev_secret()  # the secret `make run` generated
    else:
        secret = read_jwt_secret()
    assert secret is not None
    print(issue_token(args.user_id, secret, args.ttl))
    return 0


def _db(args: argparse.Namespace) -> int:
    if args.db_command == "trigger":
        return _db_trigger(args)
    if args.db_command == "install" and args.print_only:
        from relay.schema import schema_sql

        sys.stdout.write(schema_sql(examples=args.with_examples))
        return 0
    url = _database_url()
    if args.db_command == "install":
        from relay.schema import install_schema

        for name in install_schema(url, examples=args.with_examples):
            print(f"applied {name}")
        if not args.with_examples:
            print("(relay's functions only; attach them to your tables with "
                  "python -m relay db trigger)")
        return 0
    return _db_touch(url, args)


def _database_url() -> str:
    """``DATABASE_URL``, else the database ``make run`` started."""
    from relay.config import read_database_url

    return os.environ.get("DATABASE_URL") or _dev_database_url() or read_database_url()


def _db_trigger(args: argparse.Namespace) -> int:
    from relay import triggers

    spec = triggers.TriggerSpec.parse(args.table, args.channel, args.user_column,
                                      args.id_column, args.columns, args.drop)
    if args.print_only:
        sys.stdout.write(spec.drop_sql() if args.drop else spec.create_sql())
        return 0
    url = _database_url()
    if args.drop:
        print(triggers.detach(url, spec))
        return 0
    print(triggers.attach(url, spec))
    from relay.config import read_channel_templates

    templates = read_channel_templates()
    if spec.channel_pattern not in templates:
        print(f"note: relay delivers {spec.channel_pattern} only once RELAY_CHANNELS lists it "
              f"(relay's setting now: {','.join(templates)})", file=sys.stderr)
    return 0


def _db_touch(url: str, args: argparse.Namespace) -> int:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('subscription') IS NOT NULL")
            if not cur.fetchone()[0]:
                raise CommandError("db touch writes the demo's example table subscription, "
                                   "which this database lacks (make run creates it, or "
                                   "python -m relay db install --with-examples)")
            cur.execute("SELECT id FROM subscription WHERE user_id = %s ORDER BY id LIMIT 1",
                        (args.user_id,))
            row = cur.fetchone()
            if row:
                cur.execute("UPDATE subscription SET plan = %s, updated_at = now() "
                            "WHERE id = %s", (args.plan, row[0]))
            else:
                cur.execute("INSERT INTO subscription (user_id, plan, status) "
                            "VALUES (%s, %s, 'active')", (args.user_id, args.plan))
    finally:
        conn.close()
    print(f"wrote subscription of user {args.user_id}: plan={args.plan}")
    return 0


def _dev_database_url() -> str | None:
    path = DEV_DIR / "database_url"
    return path.read_text().strip() if path.exists() else None


def _watch(args: argparse.Namespace) -> int:
    import json
    from urllib.parse import urlsplit

    import websocket  # websocket-client, a development dependency

    from relay.auth import issue_token
    from relay.config import read_jwt_secret

    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise CommandError(f"watch: --url {args.url!r} is not a WebSocket URL "
                           "(ws://host:port/ws or wss://host/ws)", 2)
    secret = read_jwt_secret() if "WEBSOCKET_JWT_SECRET" in os.environ else _dev_secret()
    if secret is None:
        read_jwt_secret()  # raises: names the variable
    assert secret is not None
    try:
        # No Origin header: this is not a browser, and relay admits requests without one,
        # while websocket-client's default Origin (the relay's own URL) is in no
        # production relay's ALLOWED_ORIGINS: it would be refused with 403.
        ws = websocket.create_connection(args.url, timeout=10, suppress_origin=True)
    except websocket.WebSocketBadStatusException as exc:
        hint = {403: " (an Origin not in ALLOWED_ORIGINS, or a proxy in front of relay)",
                404: " (is this relay's /ws URL?)"}.get(exc.status_code, "")
        raise CommandError(f"watch: {args.url} refused the WebSocket handshake with HTTP "
                           f"{exc.status_code}{hint}") from None
    except websocket.WebSocketAddressException:
        raise CommandError(f"watch: cannot resolve the host of {args.url}") from None
    except ConnectionRefusedError:
        raise CommandError(f"watch: nothing accepts connections at {args.url} "
                           "(is relay running? make run starts it)") from None
    except (OSError, websocket.WebSocketException) as exc:
        raise CommandError(f"watch: cannot connect to {args.url}: {exc}") from None
    ws.settimeout(None)  # the relay pings every RELAY_PING_INTERVAL; we answer each
    ws.send(json.dumps({"type": "auth", "token": issue_token(args.user_id, secret)}))
    print(f"connected to {args.url} as user {args.user_id}; Ctrl-C to stop", flush=True)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                reason = data[2:].decode(errors="replace")
                raise CommandError(f"watch: closed by the relay: {code} {reason}"
                                   + _WATCH_CLOSE_ADVICE.get(code, ""))
            if opcode == websocket.ABNF.OPCODE_TEXT:
                text = data.decode()
                print(text, flush=True)
                if json.loads(text).get("type") == "ping":
                    ws.send('{"type":"pong"}')
    except KeyboardInterrupt:  # the way to stop watching
        return 0
    except (OSError, websocket.WebSocketException) as exc:
        raise CommandError(f"watch: connection to {args.url} lost: "
                           f"{exc or type(exc).__name__}") from None
    finally:
        ws.close()


_WATCH_CLOSE_ADVICE = {
    4001: " (the token was refused: is WEBSOCKET_JWT_SECRET here the relay's?)",
    4003: " (this user id cannot form a channel: letters, digits and _.@:- only)",
    4008: " (this user has too many connections: RELAY_MAX_CONNECTIONS_PER_USER)",
}


def _dev(args: argparse.Namespace) -> int:
    """`make run`: embedded PostgreSQL, schema, secret, gunicorn with 2 workers, a banner."""
    from relay.dev.postgres import ensure_dev_database
    from relay.schema import install_schema

    env = dict(os.environ)
    env.setdefault("PORT", str(args.port))
    port = env["PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PORT: expected a port number, got {port!r}")
    _check_port_free(env.get("RELAY_HOST", "").strip() or "127.0.0.1", port)  # dev's bind
    state: Path = args.state_dir
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


def _close_codes(args: argparse.Namespace) -> int:
    from relay import closecodes

    if args.js:
        sys.stdout.write(closecodes.as_javascript())
    else:
        for c in closecodes.ALL:
            print(f"{c.code}  {c.name:<22} reconnect={c.reconnect:<9} {c.reason}")
    return 0


def _size(args: argparse.Namespace) -> int:
    from relay import sizing_report

    return sizing_report.run(args)


_COMMANDS = {
    "listen": _listen,
    "supervise": _supervise,
    "token": _token,
    "db": _db,
    "watch": _watch,
    "dev": _dev,
    "close-codes": _close_codes,
    "size": _size,
}
