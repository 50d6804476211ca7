"""``python -m relay db trigger``: relay's trigger on an app's own tables, against a real
PostgreSQL — Prisma's quoted ``"Subscription"``/``"userId"``, schema-qualified names, the
``--columns`` limit, idempotence, ``--drop``, ``--print`` for a migration, and one line for
every input it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from relay.schema import install_schema
from tests.support import ROOT, NotifyListener

PRISMA_TABLE = """
CREATE TABLE "Subscription" (
    "id" text PRIMARY KEY,
    "userId" text NOT NULL,
    "plan" text NOT NULL,
    "stripeCustomerId" text,
    "updatedAt" timestamptz NOT NULL DEFAULT now()
)"""


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "WEBSOCKET_JWT_SECRET", "RELAY_CHANNELS")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def _one_line_failure(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def app_database(empty_database: str) -> Iterator[str]:
    """An app's database: relay's functions installed (``db install``), a Prisma table."""
    install_schema(empty_database)
    _sql(empty_database, PRISMA_TABLE)
    yield empty_database


@pytest.fixture
def listener(app_database: str) -> Iterator[NotifyListener]:
    conn = psycopg2.connect(app_database)
    conn.autocommit = True
    try:
        yield NotifyListener(conn)
    finally:
        conn.close()


def _sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:  # one committed transaction
            cursor.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []
    finally:
        conn.close()


def _trigger(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = _relay_cli("db", "trigger", *args, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    return result


def _received(listener: NotifyListener) -> list[tuple[str, dict[str, Any]]]:
    return [(n.channel, json.loads(n.payload)) for n in listener.collect()]


def _triggers_on(url: str, table: str) -> list[str]:
    return [name for (name,) in _sql(
        url, "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        (table,))]


@pytest.mark.slow
def test_prisma_table_and_camel_case_column_are_quoted(
        app_database: str, listener: NotifyListener) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    listener.listen(f"user_Subscription_{user}")
    result = _trigger(app_database, "Subscription", "--channel", "Subscription",
                      "--user-column", "userId")
    assert "every column" in result.stdout

    _sql(app_database, 'INSERT INTO "Subscription" ("id", "userId", "plan", "stripeCustomerId") '
                       "VALUES ('s1', %s, 'pro', 'cus_secret')", (user,))

    [(channel, payload)] = _received(listener)
    assert channel == f"user_Subscription_{user}"
    assert payload["table"] == "subscription" and payload["operation"] == "INSERT"
    # By default the whole row is sent, secrets included: what --columns is for.
    assert set(payload["row"]) == {"id", "userId", "plan", "stripeCustomerId", "updatedAt"}
    assert payload["row"]["stripeCustomerId"] == "cus_secret"


@pytest.mark.slow
def test_columns_limit_what_leaves_the_database(
        app_database: str, listener: NotifyListener) -> None:
    old, new = f"old{uuid.uuid4().hex[:8]}", f"new{uuid.uuid4().hex[:8]}"
    listener.listen(f"user_Subscription_{old}")
    listener.listen(f"user_Subscription_{new}")
    result = _trigger(app_database, "Subscription", "--channel", "Subscription",
                      "--user-column", "userId", "--columns", "plan,updatedAt")
    assert "columns plan, updatedAt" in result.stdout

    # A large secret that is not sent does not turn the payload into a truncated reference.
    _sql(app_database, 'INSERT INTO "Subscription" ("id", "userId", "plan", "stripeCustomerId") '
                       "VALUES ('s2', %s, 'pro', %s)", (old, "cus_" + "x" * 9000))
    _sql(app_database, """UPDATE "Subscription" SET "userId" = %s, plan = 'team'
                          WHERE "id" = 's2'""", (new,))  # reassigned to another user
    _sql(app_database, """DELETE FROM "Subscription" WHERE "id" = 's2'""")

    received = _received(listener)
    assert [(channel.split("_")[-1], p["operation"]) for channel, p in received] == [
        (old, "INSERT"), (old, "DELETE"), (new, "UPDATE"), (new, "DELETE")]
    for _, payload in received:
        assert "truncated" not in payload
        # the listed columns and the id column, always: nothing else, not even the user column
        assert set(payload["row"]) == {"id", "plan", "updatedAt"}, payload
    assert received[1][1]["reassigned"] is True
    assert [p["row"]["plan"] for _, p in received] == ["pro", "pro", "team", "team"]


@pytest.mark.slow
def test_running_it_again_replaces_the_trigger(app_database: str,
                                               listener: NotifyListener) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    listener.listen(f"user_Subscription_{user}")
    base = ("Subscription", "--channel", "Subscription", "--user-column", "userId")
    _trigger(app_database, *base)
    _trigger(app_database, *base, "--columns", "plan")

    assert _triggers_on(app_database, '"Subscription"') == ["relay_notify"]
    _sql(app_database, """INSERT INTO "Subscription" ("id", "userId", "plan")
                          VALUES ('s3', %s, 'free')""", (user,))
    [(_, payload)] = _received(listener)  # one trigger, one notification, the new columns
    assert set(payload["row"]) == {"id", "plan"}


@pytest.mark.slow
def test_schema_qualified_table_and_other_columns(app_database: str,
                                                  listener: NotifyListener) -> None:
    _sql(app_database, 'CREATE SCHEMA "Billing"; CREATE TABLE "Billing"."Invoice" '
                       '("invoiceNo" bigint PRIMARY KEY, "ownerId" text, total int)')
    listener.listen("user_Invoice_owner7")
    result = _trigger(app_database, "Billing.Invoice", "--channel", "Invoice",
                      "--user-column", "ownerId", "--id-column", "invoiceNo")
    # relay listens to the channels of RELAY_CHANNELS only: the command says so.
    assert "RELAY_CHANNELS" in result.stderr and "user_Invoice_{userId}" in result.stderr

    _sql(app_database, """INSERT INTO "Billing"."Invoice" VALUES (17, 'owner7', 990)""")

    [(channel, payload)] = _received(listener)
    assert channel == "user_Invoice_owner7"
    assert payload["table"] == "invoice"
    assert payload["row"] == {"invoiceNo": 17, "ownerId": "owner7", "total": 990}


@pytest.mark.slow
def test_names_with_quotes_cannot_inject_sql(app_database: str,
                                             listener: NotifyListener) -> None:
    table = """we"ird'; DROP TABLE "Subscription"; --"""
    _sql(app_database, 'CREATE TABLE "we""ird\'; DROP TABLE ""Subscription""; --" '
                       '(id int PRIMARY KEY, "own""er" text)')
    listener.listen("user_Weird_q1")
    _trigger(app_database, table.replace('"', '""').join('""'), "--channel", "Weird",
             "--user-column", 'own"er')

    _sql(app_database, 'INSERT INTO "we""ird\'; DROP TABLE ""Subscription""; --" '
                       "VALUES (1, 'q1')")

    [(channel, payload)] = _received(listener)
    assert channel == "user_Weird_q1" and payload["row"] == {"id": 1, 'own"er': "q1"}
    assert _sql(app_database, "SELECT to_regclass('\"Subscription\"') IS NOT NULL") == [(True,)]


@pytest.mark.slow
def test_drop_removes_the_trigger_and_may_be_repeated(app_database: str,
                                                      listener: NotifyListener) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    listener.listen(f"user_Subscription_{user}")
    _trigger(app_database, "Subscription", "--channel", "Subscription", "--user-column", "userId")

    assert _trigger(app_database, "Subscription", "--drop").stdout.startswith("dropped")
    assert _triggers_on(app_database, '"Subscription"') == []
    _sql(app_database, """INSERT INTO "Subscription" ("id", "userId", "plan")
                          VALUES ('s4', %s, 'free')""", (user,))
    assert listener.collect() == []
    assert "nothing to drop" in _trigger(app_database, "Subscription", "--drop").stdout


@pytest.mark.slow
def test_print_shows_the_sql_for_a_migration_without_a_database(
        app_database: str, listener: NotifyListener) -> None:
    result = _relay_cli("db", "trigger", "Subscription", "--channel", "Subscription",
                        "--user-column", "userId", "--columns", "plan", "--print",
                        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        '-- relay: every insert, update and delete of "Subscription" notifies\n'
        '-- user_Subscription_{userId}, the owner being the row\'s "userId",\n'
        '-- sending only the columns "plan", "id".\n'
        "CREATE OR REPLACE TRIGGER relay_notify\n"
        '    AFTER INSERT OR UPDATE OR DELETE ON "Subscription"\n'
        "    FOR EACH ROW EXECUTE FUNCTION relay_notify('Subscription', 'userId', 'id', "
        "'plan');\n")
    assert _triggers_on(app_database, '"Subscription"') == []  # printed, not run

    _sql(app_database, result.stdout)  # what a migration would run
    listener.listen("user_Subscription_p1")
    _sql(app_database, """INSERT INTO "Subscription" ("id", "userId", "plan")
                          VALUES ('s5', 'p1', 'free')""")
    [(_, payload)] = _received(listener)
    assert payload["row"] == {"id": "s5", "plan": "free"}

    dropped = _relay_cli("db", "trigger", "Subscription", "--drop", "--print")
    assert dropped.stdout == 'DROP TRIGGER IF EXISTS relay_notify ON "Subscription";\n'


@pytest.mark.parametrize(("args", "says"), [
    (["Subscription"], "--channel is required"),
    (["Subscription", "--channel", "Sub_scription"], "letters and digits only"),
    (["Subscription", "--channel", "Sub'; --"], "letters and digits only"),
    (["Subscription", "--channel", "S" * 60], "too long"),
    (["Subscription", "--channel", "S", "--columns", "plan,,id"], "empty column name"),
    (["Subscription", "--channel", "S", "--columns", "plan,plan"], "listed twice"),
    (["a.b.c", "--channel", "S"], "expected TABLE or SCHEMA.TABLE"),
    (['"Subscription', "--channel", "S"], "expected TABLE or SCHEMA.TABLE"),
    (["x" * 64, "--channel", "S"], "63-byte"),
    (["Subscription", "--channel", "S", "--user-column", "a\\b"], "backslashes"),
    (["Subscription", "--drop", "--columns", "plan"], "--columns makes no sense with --drop"),
])
def test_bad_input_is_refused_with_one_line(args: list[str], says: str) -> None:
    line = _one_line_failure(_relay_cli("db", "trigger", *args, "--print"))
    assert line.startswith("relay: db trigger: ") and says in line, line


@pytest.mark.slow
def test_a_table_that_is_not_there_is_named_with_its_near_miss(app_database: str) -> None:
    line = _one_line_failure(_relay_cli("db", "trigger", "subscription", "--channel", "S",
                                        DATABASE_URL=app_database))
    assert line == ('relay: db trigger: no table "subscription" in this database (names are '
                    'case-sensitive; did you mean public."Subscription"?)')


@pytest.mark.slow
def test_a_missing_column_names_the_option(app_database: str) -> None:
    line = _one_line_failure(_relay_cli("db", "trigger", "Subscription", "--channel", "S",
                                        DATABASE_URL=app_database))
    assert 'has no column "user_id" (--user-column; its columns: id, userId, plan' in line
    line = _one_line_failure(_relay_cli("db", "trigger", "Subscription", "--channel", "S",
                                        "--user-column", "userId", "--columns", "plan,secret",
                                        DATABASE_URL=app_database))
    assert 'has no column "secret" (--columns;' in line


@pytest.mark.slow
def test_without_db_install_it_says_what_to_run_first(empty_database: str) -> None:
    _sql(empty_database, PRISMA_TABLE)
    line = _one_line_failure(_relay_cli("db", "trigger", "Subscription", "--channel", "S",
                                        "--user-column", "userId",
                                        DATABASE_URL=empty_database))
    assert line.endswith("run python -m relay db install first")


@pytest.mark.slow
def test_a_migration_of_the_printed_sql_sets_up_an_empty_database(empty_database: str) -> None:
    # A Prisma migration (also replayed into Prisma's empty shadow database by `migrate dev`):
    # the app's table, relay's functions, then the trigger, in one script.
    install = _relay_cli("db", "install", "--print")
    trigger = _relay_cli("db", "trigger", "Subscription", "--channel", "Subscription",
                         "--user-column", "userId", "--columns", "plan", "--print")
    assert install.returncode == trigger.returncode == 0, install.stderr + trigger.stderr
    assert "subscription (" not in install.stdout.lower()  # no example tables
    _sql(empty_database, PRISMA_TABLE + ";\n" + install.stdout + trigger.stdout)

    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    try:
        listener = NotifyListener(conn)
        listener.listen("user_Subscription_m1")
        _sql(empty_database, """INSERT INTO "Subscription" ("id", "userId", "plan")
                                VALUES ('s6', 'm1', 'free')""")
        [(_, payload)] = _received(listener)
    finally:
        conn.close()
    assert payload["row"] == {"id": "s6", "plan": "free"}
