"""Install relay's database side: the ``sql/*.sql`` files, in name order, in one transaction.

Called by the CLI (``python -m relay db install``, and ``make run``) against ``DATABASE_URL``,
and by the tests. The files are written to be re-run, so installing twice is harmless.

Files whose name contains ``example`` (``sql/010_example_tables.sql``: the ``subscription``
and ``usage`` tables behind the default channels) are the demo's, not relay's: they are
applied only when asked for (``make run``, the tests, ``db install --with-examples``), never
into an app's database by default.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Two installers racing (two test sessions, two deploys) would trip over each other's
# CREATE OR REPLACE FUNCTION ("tuple concurrently updated"); one advisory lock serialises them.
_INSTALL_LOCK_KEY = 0x72656C6179  # "relay"


def is_example(path: Path) -> bool:
    return "example" in path.name


def schema_files(examples: bool = False) -> list[Path]:
    """The SQL files ``install_schema`` applies, in the order it applies them."""
    files = sorted(SQL_DIR.glob("*.sql"), key=lambda path: path.name)
    return [path for path in files if examples or not is_example(path)]


def schema_sql(examples: bool = False) -> str:
    """What ``install_schema`` runs, as one script (``db install --print``, for a migration)."""
    return "".join(f"-- relay: sql/{path.name}\n{path.read_text(encoding='utf-8').rstrip()}\n\n"
                   for path in schema_files(examples))


def install_schema(dsn: str, examples: bool = False) -> list[str]:
    """Apply relay's SQL files (and the example tables if ``examples``) to the database at
    ``dsn``; return the applied file names."""
    files = schema_files(examples)
    if not files:
        raise FileNotFoundError(f"no SQL files in {SQL_DIR}")
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:  # commits, or rolls back on error
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
            for path in files:
                cursor.execute(path.read_text(encoding="utf-8"))
    finally:
        connection.close()
    return [path.name for path in files]
