"""The SQL that attaches relay's row trigger (``relay_notify``, sql/001) to an app's own table.

Used by ``python -m relay db trigger``: names come from the command line exactly as the app
spells them (Prisma's ``Subscription`` table and ``userId`` column are case-sensitive, so
they are always quoted), are checked here, and become one ``CREATE OR REPLACE TRIGGER`` (or
``DROP TRIGGER``) statement that ``--print`` shows for a migration and the CLI runs otherwise.
Nothing from the command line reaches SQL unquoted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from relay.channels import TemplateError, check_table_part

# One relay trigger per table: a fixed name makes re-running replace it, and --drop needs
# nothing but the table.
TRIGGER_NAME = "relay_notify"
MAX_IDENTIFIER_BYTES = 63


class TriggerError(ValueError):
    """Bad input for ``db trigger``; ``str()`` is the one line to print."""


@dataclass(frozen=True)
class TriggerSpec:
    """What to attach: ``table`` is ``(schema or None, name)``, exactly as the app spells it."""

    table: tuple[str | None, str]
    channel: str | None  # None only to drop
    user_column: str = "user_id"
    id_column: str = "id"
    columns: tuple[str, ...] = ()  # empty: the whole row is sent

    @classmethod
    def parse(cls, table: str, channel: str | None, user_column: str = "user_id",
              id_column: str = "id", columns: str | None = None,
              drop: bool = False, templates: Sequence[str] = ()) -> TriggerSpec:
        """Validate command-line input; raise ``TriggerError`` with one line saying why.

        ``templates``: relay's ``RELAY_CHANNELS``, which the channel's names must not
        collide with (``relay.channels.check_table_part``)."""
        if drop and columns is not None:
            raise TriggerError("--columns makes no sense with --drop")
        if channel is None and not drop:
            raise TriggerError("--channel is required (the table part of "
                               "user_<Channel>_<userId>, e.g. --channel Subscription)")
        if channel is not None:
            _check_channel(channel, templates)
        listed: tuple[str, ...] = ()
        if columns is not None:
            listed = tuple(c.strip() for c in columns.split(","))
            if not all(listed):
                raise TriggerError(f"--columns {columns!r}: empty column name "
                                   "(write --columns a,b,c)")
            if len(set(listed)) != len(listed):
                raise TriggerError(f"--columns {columns!r}: a column is listed twice")
            for name in listed:
                _check_identifier("--columns", name)
        _check_identifier("--user-column", user_column)
        _check_identifier("--id-column", id_column)
        return cls(_parse_table(table), channel, user_column, id_column, listed)

    @property
    def qualified_table(self) -> str:
        schema, name = self.table
        return (quote_identifier(schema) + "." if schema else "") + quote_identifier(name)

    @property
    def channel_pattern(self) -> str:
        return f"user_{self.channel}_{{userId}}"

    def create_sql(self) -> str:
        """One idempotent statement (PostgreSQL 14+), with a comment saying what it sends."""
        assert self.channel is not None
        arguments = [self.channel, self.user_column, self.id_column, *self.columns]
        if self.columns:
            sent = [*self.columns] + ([self.id_column] if self.id_column not in self.columns
                                      else [])
            what = "only the columns " + ", ".join(quote_identifier(c) for c in sent)
        else:
            what = "EVERY column of the row (--columns limits them)"
        return (
            f"-- relay: every insert, update and delete of {self.qualified_table} notifies\n"
            f"-- {self.channel_pattern}, the owner being the row's "
            f"{quote_identifier(self.user_column)},\n"
            f"-- sending {what}.\n"
            f"CREATE OR REPLACE TRIGGER {TRIGGER_NAME}\n"
            f"    AFTER INSERT OR UPDATE OR DELETE ON {self.qualified_table}\n"
            f"    FOR EACH ROW EXECUTE FUNCTION relay_notify("
            + ", ".join(quote_literal(a) for a in arguments) + ");\n"
        )

    def drop_sql(self) -> str:
        return f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {self.qualified_table};\n"

    def needed_columns(self) -> tuple[str, ...]:
        """Every column the trigger reads, each once, in the order to report a missing one."""
        return tuple(dict.fromkeys((self.user_column, self.id_column, *self.columns)))


def quote_identifier(name: str) -> str:
    """PostgreSQL's quoting of an identifier: case kept, ``"`` doubled."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard string literal (``standard_conforming_strings``, on since PostgreSQL 9.1);
    backslashes are refused by ``_check_identifier``, so no escape syntax is involved."""
    return "'" + value.replace("'", "''") + "'"


def _parse_table(raw: str) -> tuple[str | None, str]:
    """``Subscription``, ``app.Subscription`` or ``"my.table"``: parts are split on a dot outside
    double quotes, and taken exactly as written (quotes around a part are optional)."""
    parts: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(raw):
        char = raw[i]
        if char == '"':
            if quoted and raw[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    if quoted or len(parts) > 2:
        raise TriggerError(f"table {raw!r}: expected TABLE or SCHEMA.TABLE")
    for part in parts:
        _check_identifier("table", part)
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _check_channel(channel: str, templates: Sequence[str]) -> None:
    # The table part is read back up to the first _ after user_: one of its own would let
    # user_<Channel>_<owner> be another user's channel (relay/channels.py says why).
    try:
        check_table_part(channel, templates)
    except TemplateError as exc:
        raise TriggerError(f"--channel {exc}") from None
    # Leave room for a user id of 8 bytes at least in PostgreSQL's 63-byte channel names.
    if len(f"user_{channel}_".encode()) > MAX_IDENTIFIER_BYTES - 8:
        raise TriggerError(f"--channel {channel!r}: too long to leave room for user ids "
                           f"in a {MAX_IDENTIFIER_BYTES}-byte channel name")


def _check_identifier(what: str, name: str) -> None:
    if not name:
        raise TriggerError(f"{what}: empty name")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise TriggerError(f"{what} {name!r}: longer than PostgreSQL's "
                           f"{MAX_IDENTIFIER_BYTES}-byte identifiers")
    if any(ord(c) < 32 or c == "\\" for c in name):
        raise TriggerError(f"{what} {name!r}: control characters and backslashes are not "
                           "supported in names")


# ----- against a database -----


def attach(dsn: str, spec: TriggerSpec) -> str:
    """Create (or replace) the trigger after checking the catalog; return what was done."""
    with _transaction(dsn) as cursor:
        cursor.execute("SELECT to_regprocedure('relay_notify()') IS NOT NULL")
        if not cursor.fetchone()[0]:
            raise TriggerError("relay_notify() is not installed in this database: "
                               "run python -m relay db install first")
        columns = _table_columns(cursor, spec)
        missing = [name for name in spec.needed_columns() if name not in columns]
        if missing:
            flag = {spec.user_column: "--user-column", spec.id_column: "--id-column"}.get(
                missing[0], "--columns")
            raise TriggerError(
                f"table {spec.qualified_table} has no column {quote_identifier(missing[0])} "
                f"({flag}; its columns: {', '.join(columns)})")
        cursor.execute(spec.create_sql())
    return (f"trigger {TRIGGER_NAME} on {spec.qualified_table}: notifies "
            f"{spec.channel_pattern} with "
            + (f"columns {', '.join(spec.columns)}" if spec.columns else "every column"))


def detach(dsn: str, spec: TriggerSpec) -> str:
    """Drop the trigger if it is there; return what was done."""
    with _transaction(dsn) as cursor:
        _table_columns(cursor, spec)
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
                       "AND tgname = %s", (spec.qualified_table, TRIGGER_NAME))
        present = cursor.fetchone()[0]
        cursor.execute(spec.drop_sql())
    if not present:
        return f"no trigger {TRIGGER_NAME} on {spec.qualified_table}: nothing to drop"
    return f"dropped trigger {TRIGGER_NAME} on {spec.qualified_table}"


@contextmanager
def _transaction(dsn: str) -> Iterator[Any]:
    """A cursor in one transaction: committed when the block ends, rolled back on error."""
    import psycopg2

    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def _table_columns(cursor: Any, spec: TriggerSpec) -> list[str]:
    cursor.execute("SELECT to_regclass(%s)::oid", (spec.qualified_table,))
    oid = cursor.fetchone()[0]
    if oid is None:
        schema, name = spec.table
        cursor.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE lower(c.relname) = lower(%s) "
            "AND c.relkind IN ('r', 'p') AND (%s::text IS NULL OR n.nspname = %s) "
            "ORDER BY 1 LIMIT 3", (name, schema, schema))
        near = [row[0] for row in cursor.fetchall()]
        hint = (f" (names are case-sensitive; did you mean {' or '.join(near)}?)" if near
                else "")
        raise TriggerError(f"no table {spec.qualified_table} in this database{hint}")
    cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                   "AND NOT attisdropped ORDER BY attnum", (oid,))
    return [row[0] for row in cursor.fetchall()]
