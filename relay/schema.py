"""Install relay's database side: every ``sql/*.sql`` file, in name order, in one transaction.

Called by the CLI (and ``make run``) against ``DATABASE_URL``, and by the tests. The files are
written to be re-run, so installing twice is harmless.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Two installers racing (two test sessions, two deploys) would trip over each other's
# CREATE OR REPLACE FUNCTION ("tuple concurrently updated"); one advisory lock serialises them.
_INSTALL_LOCK_KEY = 0x72656C6179  # "relay"


def schema_files() -> list[Path]:
    """The SQL files ``install_schema`` applies, in the order it applies them."""
    return sorted(SQL_DIR.glob("*.sql"), key=lambda path: path.name)


def install_schema(dsn: str) -> list[str]:
    """Apply every SQL file to the database at ``dsn``; return the applied file names."""
    files = schema_files()
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
