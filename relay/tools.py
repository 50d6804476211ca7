"""The operator's and developer's tools behind ``python -m relay``: ``db install``,
``db trigger``, ``db touch`` and ``watch``, and what the tools fall back to when the
environment names no database or secret: what ``make run`` left in ``.relay-dev/``.

A tool's expected failure is a ``CommandError``: one line and an exit code, which
``relay.cli`` prints without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay.config import (
    database_url_if_set,
    jwt_secret_if_set,
    notify_channel_if_set,
    read_channel_templates,
    read_database_url,
    read_jwt_secret,
    read_max_token_lifetime,
    read_token_claims,
)

ROOT = Path(__file__).resolve().parent.parent
DEV_DIR = ROOT / ".relay-dev"  # make run's state: its database, the URL, the secret


class CommandError(Exception):
    """An expected failure of a tool; ``str()`` is the one line to print."""

    def __init__(self, line: str, exit_code: int = 1) -> None:
        super().__init__(line)
        self.exit_code = exit_code


def dev_secret() -> bytes | None:
    """The secret ``make run`` generated, if it ran here."""
    path = DEV_DIR / "secret"
    return path.read_text().strip().encode() if path.exists() else None


def dev_database_url() -> str | None:
    """The database ``make run`` used, if it ran here."""
    path = DEV_DIR / "database_url"
    return path.read_text().strip() if path.exists() else None


def database_url() -> str:
    """``DATABASE_URL``, else the database ``make run`` started, else the error naming it."""
    return database_url_if_set() or dev_database_url() or read_database_url()


def jwt_secret() -> bytes:
    """``WEBSOCKET_JWT_SECRET``, else the secret ``make run`` generated, else the error
    naming the variable."""
    return jwt_secret_if_set() or dev_secret() or read_jwt_secret()


def mint_token(user_id: str, ttl: int = 3600) -> str:
    """A token as the app's endpoint signs it, for the relay this environment configures: its
    secret, ``iss`` and ``aud``; refused here if that relay would refuse its lifetime."""
    from relay.auth import issue_token

    cap = read_max_token_lifetime()
    if ttl <= 0 or (cap and ttl > cap):
        raise CommandError(f"token: --ttl {ttl} must be positive"
                           + (f" and at most RELAY_MAX_TOKEN_LIFETIME ({cap:g}s), or relay "
                              "refuses the token" if cap else ""), 2)
    issuer, audience = read_token_claims()
    return issue_token(user_id, jwt_secret(), ttl, issuer=issuer, audience=audience)


def db(args: argparse.Namespace) -> int:
    """``python -m relay db install|trigger|touch``."""
    if args.db_command == "trigger":
        return _db_trigger(args)
    if args.db_command == "install" and args.print_only:
        from relay.schema import schema_sql

        sys.stdout.write(schema_sql(examples=args.with_examples,
                                    notify_channel=notify_channel_if_set()))
        return 0
    url = database_url()
    if args.db_command == "install":
        return _db_install(url, args)
    return _db_touch(url, args)


def _db_install(url: str, args: argparse.Namespace) -> int:
    from relay.schema import (
        SQL_VERSION,
        NewerSchemaError,
        direct_notifiers,
        install,
        installed_version,
        legacy_notify_on,
    )

    channel = notify_channel_if_set()
    before = installed_version(url)
    try:
        done = install(url, examples=args.with_examples, notify_channel=channel)
    except NewerSchemaError as exc:
        raise CommandError(f"db install: {exc}") from None
    for name in done.files:
        print(f"applied {name}")
    print(f"relay's SQL is at version {SQL_VERSION}" + (
        "" if before == SQL_VERSION else
        " (new install)" if before is None else f" (upgraded from version {before})"))
    if done.held:
        print(f"note: the outbox is on but held off: {done.held}. Nothing to do: it turns on by "
              "itself (docs/operations.md, \"Upgrades\")")
    if channel is not None:
        print(f"relay_publish notifies the channel {channel!r} (RELAY_NOTIFY_CHANNEL)")
    if legacy_notify_on(url):
        print("note: legacy_notify is on: relay_publish also notifies each user's own channel, "
              "for relays of the version before (which LISTEN per user) still running during "
              "this deploy. Once every machine runs this version: psql \"$DATABASE_URL\" -c "
              "\"SELECT relay.set('legacy_notify', 'off')\"")
    if not args.with_examples:
        print("(relay's functions only; attach them to your tables with "
              "python -m relay db trigger)")
    # The app's own per-user pg_notify triggers are heard only while relay LISTENs per user:
    # RELAY_USER_CHANNELS=auto stops doing so now that relay's objects are installed.
    for found in direct_notifiers(url, read_channel_templates()):
        fired_by = (f" (run by trigger {', trigger '.join(found.triggers)})" if found.triggers
                    else "")
        print(f"warning: function {found.function}{fired_by} calls pg_notify itself on "
              f"per-user channels ({found.prefix}…): relay now listens to its shared channel "
              "only (RELAY_USER_CHANNELS=auto) and no longer hears them. Replace it with relay's "
              "trigger (python -m relay db trigger), or keep it with RELAY_USER_CHANNELS=listen: "
              "see docs/operations.md, \"Migrating from per-user pg_notify triggers\"",
              file=sys.stderr)
    return 0


def _db_trigger(args: argparse.Namespace) -> int:
    from relay import triggers
    from relay.config import read_channel_templates

    templates = read_channel_templates()
    spec = triggers.TriggerSpec.parse(args.table, args.channel, args.user_column,
                                      args.id_column, args.columns, args.drop, templates)
    if args.print_only:
        sys.stdout.write(spec.drop_sql() if args.drop else spec.create_sql())
        return 0
    url = database_url()
    if args.drop:
        print(triggers.detach(url, spec))
        return 0
    print(triggers.attach(url, spec))
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


def kick(args: argparse.Namespace) -> int:
    """``python -m relay kick --user-id X``: ``relay_revoke(X)`` (sql/004), which every relay
    hears on its shared channel."""
    import psycopg2

    connection = psycopg2.connect(database_url())
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT to_regprocedure('public.relay_revoke(text)') IS NOT NULL")
            if not cursor.fetchone()[0]:
                raise CommandError("kick: relay_revoke() is not installed in this database: "
                                   "run python -m relay db install first")
            cursor.execute("SELECT relay_revoke(%s)", (args.user_id,))
            revoked_at = cursor.fetchone()[0]
    finally:
        connection.close()
    print(f"revoked user {args.user_id} at {revoked_at.isoformat()}: every relay closes their "
          f"connections now (4001) and refuses their tokens issued before")
    return 0


def watch(args: argparse.Namespace) -> int:
    """``python -m relay watch``: connect as a user and print every message."""
    import json
    from urllib.parse import urlsplit

    import websocket  # websocket-client, a development dependency

    from relay import closecodes

    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise CommandError(f"watch: --url {args.url!r} is not a WebSocket URL "
                           "(ws://host:port/ws or wss://host/ws)", 2)
    token = mint_token(args.user_id)
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
    ws.send(json.dumps({"type": "auth", "token": token}))
    print(f"connected to {args.url} as user {args.user_id}; Ctrl-C to stop", flush=True)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = (int.from_bytes(data[:2], "big") if len(data) >= 2
                        else closecodes.NO_STATUS_RECEIVED)
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
    4001: " (the token was refused: are WEBSOCKET_JWT_SECRET, RELAY_JWT_ISSUER and "
          "RELAY_JWT_AUDIENCE here the relay's?)",
    4003: " (refused for good: the reason says why, e.g. a user id outside "
          "letters, digits and _.@:-)",
    4008: " (this user has too many connections: RELAY_MAX_CONNECTIONS_PER_USER)",
}
