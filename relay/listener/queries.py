"""What the database link asks the database on connect, and how it LISTENs many channels.

``read_info`` reads what the database is (``DatabaseInfo``: its version, whether relay's SQL
is installed, what ``relay.hello(2)`` answers, relay_revoke()'s recent records) on one
cursor; ``batches`` and ``statements`` turn many channels into few ``LISTEN``/``UNLISTEN``
round trips, every name quoted (trap 4). Only ``DatabaseLink`` calls them, on its own
connection and under its own timeout; the statements against relay's outbox are
``relay.listener.outbox``'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

log = logging.getLogger("relay.listener")

# Channels per LISTEN/UNLISTEN round trip: after a reconnect thousands of channels are
# LISTENed again, and one round trip each would delay the resync by seconds over a WAN.
_LISTEN_BATCH = 500
# The highest relay SQL version whose frames this listener speaks (relay.hello(2): the
# durable history). Against version 1's SQL, which has only relay.hello(), it falls back.
SPEAKS = 2
# relay's SQL is installed when relay.hello() exists. Read from the catalog, which every role
# may read (schema relay itself grants nothing to other roles).
INSTALLED = ("EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
             "ON n.oid = p.pronamespace WHERE n.nspname = 'relay' AND p.proname = 'hello' "
             "AND p.pronargs = 0)")
# Revocations a token could still be subject to: those younger than the longest token
# lifetime (and its clock skew); all of them without a cap.
_REVOCATIONS = ("SELECT user_id, extract(epoch FROM revoked_at)::float8 FROM relay.revocations "
                "WHERE %(window)s = 0 OR revoked_at > now() - make_interval(secs => %(window)s)")


@dataclass(frozen=True)
class DatabaseInfo:
    """What the database is, read on connect and on ``DatabaseLink.refresh``."""

    server_version: int  # server_version_num: 160004 for 16.4
    installed: bool  # relay's SQL (relay.hello()) is there
    hello: dict[str, Any] | None = None  # what relay.hello() answered, if it could be called
    # relay_revoke()'s records young enough to matter: user → epoch seconds (None: no table)
    revocations: dict[str, float] | None = None


def read_info(conn: psycopg2.extensions.connection, max_token_lifetime: float) -> DatabaseInfo:
    """What the database is, now (the caller bounds it with its timeout)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT current_setting('server_version_num')::int, {INSTALLED}")
        version, installed = cur.fetchone()
        hello = None
        if installed:
            try:
                hello = _hello(cur)
            except psycopg2.Error as exc:
                if conn.closed:
                    raise
                # Not the installing role (schema relay grants nothing to others): the
                # shared channel still works, with RELAY_NOTIFY_CHANNEL's name.
                log.warning("cannot call relay.hello() (%s): connect relay as the role "
                            "that ran `python -m relay db install`", describe(exc))
        revocations = (_read_revocations(cur, max_token_lifetime) if hello is not None
                       else None)
    return DatabaseInfo(version, bool(installed), hello if isinstance(hello, dict) else None,
                        revocations)


def _read_revocations(cur: Any, cap: float) -> dict[str, float] | None:
    """relay_revoke()'s records (sql/004), read after the shared channel is LISTENed: a
    revocation is in them, or its notification comes after (or both)."""
    cur.execute("SELECT to_regclass('relay.revocations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return None  # SQL from before revocations: nothing to read
    cur.execute(_REVOCATIONS, {"window": cap + 60 if cap else 0})
    return {user: float(at) for user, at in cur.fetchall()}


def _hello(cur: Any) -> Any:
    """``relay.hello(2)``: this listener speaks the durable history (the database keeps
    the outbox off while a listener of version 1, which calls ``relay.hello()``, is
    connected). Version 1's SQL has only ``relay.hello()``."""
    try:
        cur.execute("SELECT relay.hello(%s)", (SPEAKS,))
    except psycopg2.errors.UndefinedFunction:
        cur.execute("SELECT relay.hello()")
    return cur.fetchone()[0]


def batches(channels: list[str]) -> list[list[str]]:
    """``channels`` in batches of 500, one round trip each."""
    return [channels[i:i + _LISTEN_BATCH] for i in range(0, len(channels), _LISTEN_BATCH)]


def statements(command: str, channels: list[str]) -> sql.Composable:
    """``LISTEN "a"; LISTEN "b"; …`` in one round trip, every name quoted (trap 4)."""
    return sql.SQL("; ").join(
        sql.SQL(command + " {}").format(sql.Identifier(channel)) for channel in channels)


def describe(exc: BaseException) -> str:
    """An exception in one line, for the log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
