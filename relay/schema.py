"""Install relay's database side: the ``sql/*.sql`` files, in name order, in one transaction.

Called by the CLI (``python -m relay db install``, and ``make run``) against ``DATABASE_URL``,
and by the tests. The files are written to be re-run, so installing twice is harmless, and
they upgrade whatever version of relay's SQL the database holds (``SQL_VERSION`` and before);
a database with a newer version is refused (``NewerSchemaError``) before anything runs, and the
SQL refuses it again inside the transaction, should two installers race.

Files whose name contains ``example`` (``sql/010_example_tables.sql``: the ``subscription``
and ``usage`` tables behind the default channels) are the demo's, not relay's: they are
applied only when asked for (``make run``, the tests, ``db install --with-examples``), never
into an app's database by default.

``direct_notifiers`` finds what the install cannot fix for the app: its own functions that
call ``pg_notify`` on per-user channels, which relay hears only while it LISTENs per user
(``RELAY_USER_CHANNELS``); ``db install`` names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# The version the files in sql/ install (relay.meta.version; docs/operations.md "Upgrades"):
# 1 the shared channel, 2 the durable history (the outbox), 3 the same with each channel's head
# read from the outbox (numbering at COMMIT writes nothing else).
SQL_VERSION = 3

# Two installers racing (two test sessions, two deploys) would trip over each other's
# CREATE OR REPLACE FUNCTION ("tuple concurrently updated"); one advisory lock serialises them.
_INSTALL_LOCK_KEY = 0x72656C6179  # "relay"


def is_example(path: Path) -> bool:
    return "example" in path.name


def schema_files(examples: bool = False) -> list[Path]:
    """The SQL files ``install_schema`` applies, in the order it applies them."""
    files = sorted(SQL_DIR.glob("*.sql"), key=lambda path: path.name)
    return [path for path in files if examples or not is_example(path)]


def schema_sql(examples: bool = False, notify_channel: str | None = None) -> str:
    """What ``install_schema`` runs, as one script (``db install --print``, for a migration)."""
    script = "".join(f"-- relay: sql/{path.name}\n{path.read_text(encoding='utf-8').rstrip()}\n\n"
                     for path in schema_files(examples))
    if notify_channel is not None:
        literal = "'" + notify_channel.replace("'", "''") + "'"
        script += ("-- relay: RELAY_NOTIFY_CHANNEL\n"
                   + _SET_CHANNEL.replace("%s", literal) + ";\n")
    return script


# relay.set announces the change (kind c) on the old channel, so running relays follow it.
_SET_CHANNEL = ("SELECT relay.set('notify_channel', %s) WHERE (SELECT value "
                "FROM relay.settings WHERE name = 'notify_channel') <> %s")


class NewerSchemaError(RuntimeError):
    """The database holds a newer version of relay's SQL than this relay installs."""

    def __init__(self, installed: int) -> None:
        super().__init__(
            f"this database has relay's SQL version {installed}, newer than this relay's "
            f"(version {SQL_VERSION}): refusing to downgrade it. Deploy a relay of version "
            f"{installed} or later; relays of this version keep working with the newer SQL")
        self.installed = installed


def installed_version(dsn: str) -> int | None:
    """The version of relay's SQL in the database: ``None`` when there is none, 0 for relay's
    SQL from before versions were recorded (``relay_notify_owner`` in schema public)."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            return _installed_version(cursor)
    finally:
        connection.close()


def _installed_version(cursor: psycopg2.extensions.cursor) -> int | None:
    cursor.execute("SELECT to_regclass('relay.meta') IS NOT NULL, to_regprocedure("
                   "'public.relay_notify_owner(text,text,text,text,json,text,boolean)') "
                   "IS NOT NULL")
    has_meta, has_v0 = cursor.fetchone()
    if has_meta:
        cursor.execute("SELECT max(version) FROM relay.meta")
        return cursor.fetchone()[0] or 0
    return 0 if has_v0 else None


def install_schema(dsn: str, examples: bool = False,
                   notify_channel: str | None = None) -> list[str]:
    """Apply relay's SQL files (and the example tables if ``examples``) to the database at
    ``dsn``, and ``notify_channel`` (``RELAY_NOTIFY_CHANNEL``) when given; return the applied
    file names. Raises ``NewerSchemaError`` when the database holds a newer version."""
    return install(dsn, examples, notify_channel).files


@dataclass(frozen=True)
class Installed:
    """What ``install`` applied, and what it left: why the outbox is held off, if it is."""

    files: list[str]
    held: str | None


def install(dsn: str, examples: bool = False, notify_channel: str | None = None) -> Installed:
    """``install_schema``, also reporting the outbox's hold as the install left it (read in
    its transaction: a running relay's hello(2) may release it a moment after the commit)."""
    files = schema_files(examples)
    if not files:
        raise FileNotFoundError(f"no SQL files in {SQL_DIR}")
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:  # commits, or rolls back on error
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
            installed = _installed_version(cursor)
            if installed is not None and installed > SQL_VERSION:
                raise NewerSchemaError(installed)
            for path in files:
                cursor.execute(path.read_text(encoding="utf-8"))
            if notify_channel is not None:
                cursor.execute(_SET_CHANNEL, (notify_channel, notify_channel))
            cursor.execute("SELECT outbox_held FROM relay.meta")
            row = cursor.fetchone()
    finally:
        connection.close()
    return Installed([path.name for path in files], row[0] if row else None)


def legacy_notify_on(dsn: str) -> bool:
    """Whether relay_publish also notifies each user's own channel (``legacy_notify``: set by
    an upgrade from relay's SQL before version 1, for the relays still running it)."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT value::boolean FROM relay.settings "
                           "WHERE name = 'legacy_notify'")
            row = cursor.fetchone()
    finally:
        connection.close()
    return bool(row and row[0])


@dataclass(frozen=True)
class DirectNotifier:
    """An app's function that calls ``pg_notify``/``NOTIFY`` itself, on what looks like a
    per-user channel, and the triggers that run it."""

    function: str  # its signature, as regprocedure prints it: public.notify_sub()
    triggers: tuple[str, ...]  # "name ON table"
    prefix: str  # the channel text that gave it away, e.g. user_


_NOTIFY_CALL = re.compile(r"\bpg_notify\s*\(|\bnotify\s+[\w\"]", re.IGNORECASE)


def channel_prefixes(templates: tuple[str, ...]) -> tuple[str, ...]:
    """The fixed text a per-user channel starts with, per template, most telling first:
    ``user_Subscription_{userId}`` → ``user_Subscription_``, then ``user_`` (an app that
    builds ``'user_' || TG_ARGV[0] || '_' || id`` spells only that)."""
    prefixes: list[str] = []
    for template in templates:
        head = template.split("{userId}", 1)[0]
        if head:
            prefixes.append(head)
            first = head.split("_", 1)[0] + "_" if "_" in head else ""
            if first and first != head:
                prefixes.append(first)
    return tuple(dict.fromkeys(prefixes))


def direct_notifiers(dsn: str, templates: tuple[str, ...]) -> list[DirectNotifier]:
    """Functions outside relay's own that NOTIFY a channel spelled like one of ``templates``'
    (per-user channels): with the shared channel alone (``RELAY_USER_CHANNELS=off``, and
    ``auto`` once relay's SQL is installed) relay no longer hears them."""
    prefixes = channel_prefixes(templates)
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("""
                SELECT p.oid::regprocedure::text, p.prosrc,
                       array(SELECT format('%I ON %s', t.tgname, t.tgrelid::regclass)
                             FROM pg_trigger t WHERE t.tgfoid = p.oid AND NOT t.tgisinternal
                             ORDER BY 1)
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'relay')
                  AND n.nspname NOT LIKE 'pg\\_%'
                  AND p.prosrc ~* '(pg_notify|notify)'
                ORDER BY 1""")
            rows = cursor.fetchall()
    finally:
        connection.close()
    found = []
    for signature, source, triggers in rows:
        if not _NOTIFY_CALL.search(source):
            continue
        prefix = next((p for p in prefixes if p in source), None)
        if prefix is not None:
            found.append(DirectNotifier(signature, tuple(triggers), prefix))
    return found
