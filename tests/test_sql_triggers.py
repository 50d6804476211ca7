"""The bundled triggers (sql/) against a real PostgreSQL: channel names, payloads, limits.

relay_notify publishes through relay_publish: one NOTIFY on relay's shared channel whose
payload is an r1 frame carrying the logical channel (``NotifyListener`` reads both). With the
outbox (the default) a row of any size travels whole; with the outbox off (version 1's
behaviour) a row too big for one NOTIFY becomes a reference to it. Each mode has a database
of its own, so that no relay of another test module can change what these tests see."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from relay.schema import install_schema, schema_files
from tests.outbox_support import install_durable
from tests.support import NotifyListener, execute

pytestmark = pytest.mark.slow  # every test here boots real processes

NOTIFY_PAYLOAD_LIMIT = 8000


def _database(postgres_url: str, outbox: str) -> Iterator[str]:
    name = f"relay_triggers_{outbox}_{uuid.uuid4().hex[:8]}"
    execute(postgres_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg2.extensions.make_dsn(postgres_url, dbname=name)
    try:
        install_durable(url, examples=True)
        execute(url, "SELECT relay.set('outbox', %s)", (outbox,))
        yield url
    finally:
        execute(postgres_url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture(scope="module")
def app_db(postgres_url: str) -> Iterator[str]:
    yield from _database(postgres_url, "on")


@pytest.fixture(scope="module")
def app_db_off(postgres_url: str) -> Iterator[str]:
    yield from _database(postgres_url, "off")


def _listener(url: str) -> Iterator[NotifyListener]:
    conn = psycopg2.connect(url)
    conn.autocommit = True  # a listener inside a transaction hears nothing
    try:
        yield NotifyListener(conn)
    finally:
        conn.close()


def _writer(url: str) -> Iterator[Any]:
    conn = psycopg2.connect(url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def listener(app_db: str) -> Iterator[NotifyListener]:
    yield from _listener(app_db)


@pytest.fixture
def writer(app_db: str) -> Iterator[Any]:
    yield from _writer(app_db)


@pytest.fixture
def listener_off(app_db_off: str) -> Iterator[NotifyListener]:
    yield from _listener(app_db_off)


@pytest.fixture
def writer_off(app_db_off: str) -> Iterator[Any]:
    yield from _writer(app_db_off)


def _write(writer: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
    with writer, writer.cursor() as cursor:  # one committed transaction
        cursor.execute(statement, params or None)
        return cursor.fetchone() if cursor.description else None


def _payloads(notifies: list[psycopg2.extensions.Notify]) -> list[tuple[str, dict[str, Any]]]:
    return [(n.channel, json.loads(n.payload)) for n in notifies]


def _unique_user(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def test_subscription_insert_update_delete_notify_the_case_preserved_channel(
    listener: NotifyListener, writer: Any
) -> None:
    listener.listen("user_Subscription_AbC")
    listener.listen("user_subscription_abc")  # what an unquoted LISTEN would have heard
    before = time.time()

    (row_id,) = _write(
        writer,
        "INSERT INTO subscription (user_id, plan, status) VALUES ('AbC', 'pro', 'active') "
        "RETURNING id",
    )
    _write(writer, "UPDATE subscription SET status = 'past_due' WHERE id = %s", (row_id,))
    _write(writer, "DELETE FROM subscription WHERE id = %s", (row_id,))

    received = _payloads(listener.collect())
    assert [channel for channel, _ in received] == ["user_Subscription_AbC"] * 3
    assert [p["operation"] for _, p in received] == ["INSERT", "UPDATE", "DELETE"]
    for _, payload in received:
        assert set(payload) == {"table", "operation", "row", "ts"}
        assert payload["table"] == "subscription"
        assert payload["row"]["id"] == row_id
        assert payload["row"]["user_id"] == "AbC"
        assert isinstance(payload["ts"], float)
        assert before - 1 <= payload["ts"] <= time.time() + 1
    insert, update, delete = (payload["row"] for _, payload in received)
    assert insert["plan"] == "pro" and insert["status"] == "active"
    assert set(insert) == {"id", "user_id", "plan", "status", "notes", "updated_at"}
    assert update["status"] == "past_due"
    assert delete["status"] == "past_due"  # DELETE carries the row as it was


def test_usage_notifies_user_usage_channel(listener: NotifyListener, writer: Any) -> None:
    listener.listen("user_Usage_42")
    (row_id,) = _write(
        writer,
        "INSERT INTO usage (user_id, metric, amount) VALUES ('42', 'api_calls', 7) RETURNING id",
    )

    [(channel, payload)] = _payloads(listener.collect())
    assert channel == "user_Usage_42"
    assert payload["table"] == "usage"
    assert payload["operation"] == "INSERT"
    assert payload["row"]["id"] == row_id
    assert payload["row"]["amount"] == 7


def test_with_the_outbox_a_row_of_any_size_arrives_whole(
    listener: NotifyListener, writer: Any
) -> None:
    user = _unique_user()
    listener.listen(f"user_Subscription_{user}")
    for size in (9000, 20_000, 200_000):
        (row_id,) = _write(
            writer,
            "INSERT INTO subscription (user_id, plan, notes) VALUES (%s, 'pro', %s) "
            "RETURNING id", (user, "x" * size))
        [notify] = listener.collect()
        assert notify.frame.startswith("r1 r ")  # the wake-up: the listener reads the row
        payload = json.loads(notify.payload)
        assert payload["row"]["id"] == row_id and payload["row"]["notes"] == "x" * size
        assert "truncated" not in payload


def test_without_the_outbox_a_row_too_large_for_notify_arrives_as_truncated_reference(
    listener_off: NotifyListener, writer_off: Any
) -> None:
    listener, writer = listener_off, writer_off
    user = _unique_user()
    listener.listen(f"user_Subscription_{user}")

    (row_id,) = _write(
        writer,
        "INSERT INTO subscription (user_id, plan, notes) VALUES (%s, 'pro', %s) RETURNING id",
        (user, "x" * 9000),
    )

    [notify] = listener.collect()
    assert len(notify.frame.encode()) < NOTIFY_PAYLOAD_LIMIT
    payload = json.loads(notify.payload)
    assert set(payload) == {"table", "operation", "id", "truncated", "ts"}
    assert payload == {
        "table": "subscription", "operation": "INSERT", "id": row_id, "truncated": True,
        "ts": payload["ts"],
    }
    assert _write(writer, "SELECT length(notes) FROM subscription WHERE id = %s", (row_id,)) == (
        9000,
    )


def test_payload_size_is_measured_in_bytes_not_characters(
    listener_off: NotifyListener, writer_off: Any
) -> None:
    listener, writer = listener_off, writer_off
    user = _unique_user()
    listener.listen(f"user_Subscription_{user}")
    notes = "é" * 3900  # 3900 characters but 7800 bytes: with the rest of the row, over 8000

    (row_id,) = _write(
        writer,
        "INSERT INTO subscription (user_id, notes) VALUES (%s, %s) RETURNING id",
        (user, notes),
    )

    [(_, payload)] = _payloads(listener.collect())
    assert payload["truncated"] is True
    assert payload["id"] == row_id


def test_row_just_under_the_limit_is_sent_whole(listener: NotifyListener, writer: Any) -> None:
    user = _unique_user()
    listener.listen(f"user_Subscription_{user}")
    (row_id,) = _write(
        writer, "INSERT INTO subscription (user_id) VALUES (%s) RETURNING id", (user,)
    )
    [empty] = listener.collect()
    # Grow notes so the frame (header, channel and payload) lands a few bytes under the limit.
    notes = "n" * (NOTIFY_PAYLOAD_LIMIT - len(empty.frame.encode()) - 20)

    _write(writer, "UPDATE subscription SET notes = %s WHERE id = %s", (notes, row_id))

    [notify] = listener.collect()
    payload = json.loads(notify.payload)
    assert "truncated" not in payload
    assert payload["row"]["notes"] == notes
    assert NOTIFY_PAYLOAD_LIMIT - 40 < len(notify.frame.encode()) < NOTIFY_PAYLOAD_LIMIT


@pytest.mark.parametrize("outbox", ["on", "off"])
def test_the_limit_counts_the_channel_that_travels_in_the_frame(
    outbox: str, app_db: str, app_db_off: str
) -> None:
    # NOTIFY refuses 8000 bytes: a frame of 7,999 bytes goes whole, one byte more becomes the
    # reference. The channel is part of the frame now, so a longer user id moves the row
    # size at which that happens, byte for byte. With the outbox, one byte more becomes a
    # kind-r frame and the row is read whole from the outbox.
    url = app_db if outbox == "on" else app_db_off
    listen_conn = psycopg2.connect(url)
    listen_conn.autocommit = True
    listener = NotifyListener(listen_conn)
    writer = psycopg2.connect(url)
    for user in (_unique_user(), _unique_user("a-much-longer-user-id-")):
        listener.listen(f"user_Subscription_{user}")
        (row_id,) = _write(writer, "INSERT INTO subscription (user_id, notes) VALUES (%s, 'n') "
                                   "RETURNING id", (user,))
        [first] = listener.collect()
        room = NOTIFY_PAYLOAD_LIMIT - 1 - len(first.frame.encode())  # bytes left to 7,999
        for extra, whole in ((room, True), (room + 1, False)):
            # UPDATE and INSERT are the same length, and updated_at does not change.
            _write(writer, "UPDATE subscription SET notes = %s WHERE id = %s",
                   ("n" * (1 + extra), row_id))
            [notify] = listener.collect()
            payload = json.loads(notify.payload)
            if whole:
                assert len(notify.frame.encode()) == NOTIFY_PAYLOAD_LIMIT - 1
                assert payload["row"]["notes"] == "n" * (1 + extra)
            elif outbox == "on":
                assert notify.frame.startswith("r1 r ")
                assert payload["row"]["notes"] == "n" * (1 + extra)
            else:
                assert payload["truncated"] is True and payload["id"] == row_id
    listen_conn.close()
    writer.close()


def test_changing_owner_notifies_old_owner_of_removal_and_new_owner_of_update(
    listener: NotifyListener, writer: Any
) -> None:
    old, new = _unique_user("old"), _unique_user("new")
    listener.listen(f"user_Subscription_{old}")
    listener.listen(f"user_Subscription_{new}")
    (row_id,) = _write(
        writer,
        "INSERT INTO subscription (user_id, plan) VALUES (%s, 'secret-old') RETURNING id",
        (old,),
    )
    listener.collect()

    _write(
        writer,
        "UPDATE subscription SET user_id = %s, plan = 'secret-new' WHERE id = %s",
        (new, row_id),
    )

    received = dict(_payloads(listener.collect()))
    assert set(received) == {f"user_Subscription_{old}", f"user_Subscription_{new}"}
    to_old = received[f"user_Subscription_{old}"]
    assert to_old["operation"] == "DELETE"
    assert to_old["reassigned"] is True
    assert to_old["row"] == {**to_old["row"], "id": row_id, "user_id": old, "plan": "secret-old"}
    to_new = received[f"user_Subscription_{new}"]
    assert to_new["operation"] == "UPDATE"
    assert "reassigned" not in to_new
    assert to_new["row"]["user_id"] == new and to_new["row"]["plan"] == "secret-new"


def test_user_id_too_long_for_a_channel_does_not_fail_the_write(
    listener: NotifyListener, writer: Any
) -> None:
    user = "u" * 60  # user_Subscription_ + 60 bytes > 63
    assert len(f"user_Subscription_{user}".encode()) > 63

    (row_id,) = _write(
        writer, "INSERT INTO subscription (user_id) VALUES (%s) RETURNING id", (user,)
    )

    assert row_id is not None
    assert listener.collect() == []
    assert any("63 bytes" in notice for notice in writer.notices)


def test_multibyte_user_id_is_measured_in_bytes(listener: NotifyListener, writer: Any) -> None:
    user = "ü" * 30  # 30 characters, 60 bytes: the channel is 78 bytes
    (row_id,) = _write(
        writer, "INSERT INTO usage (user_id, amount) VALUES (%s, 1) RETURNING id", (user,)
    )
    assert row_id is not None
    assert listener.collect() == []


def test_trigger_arguments_choose_the_user_and_id_columns(
    listener_off: NotifyListener, writer_off: Any
) -> None:
    # The id column names the row in the reference that replaces a row too big for one
    # NOTIFY, which only happens without the outbox.
    listener, writer = listener_off, writer_off
    table = f"relay_test_notes_{uuid.uuid4().hex[:8]}"
    user = _unique_user()
    listener.listen(f"user_Note_{user}")
    _write(
        writer,
        sql.SQL(
            "CREATE TABLE {table} (pk bigserial PRIMARY KEY, owner text, body text);"
            "CREATE TRIGGER relay AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION relay_notify('Note', 'owner', 'pk')"
        ).format(table=sql.Identifier(table)),
    )
    try:
        (pk,) = _write(
            writer,
            sql.SQL("INSERT INTO {} (owner, body) VALUES (%s, %s) RETURNING pk").format(
                sql.Identifier(table)
            ),
            (user, "b" * 9000),
        )
        [(channel, payload)] = _payloads(listener.collect())
        assert channel == f"user_Note_{user}"
        assert payload["table"] == table
        assert payload["id"] == pk and payload["truncated"] is True
    finally:
        _write(writer, sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


def test_install_twice_is_idempotent_and_keeps_data(
    app_db: str, listener: NotifyListener, writer: Any
) -> None:
    postgres_url = app_db
    user = _unique_user()
    listener.listen(f"user_Subscription_{user}")
    (row_id,) = _write(
        writer, "INSERT INTO subscription (user_id) VALUES (%s) RETURNING id", (user,)
    )
    listener.collect()

    applied = install_schema(postgres_url, examples=True)
    assert install_schema(postgres_url, examples=True) == applied
    assert applied == [path.name for path in schema_files(examples=True)]
    assert applied == ["001_relay_schema.sql", "002_relay_functions.sql",
                       "003_relay_install.sql", "004_relay_revocation.sql",
                       "010_example_tables.sql"]

    assert _write(writer, "SELECT user_id FROM subscription WHERE id = %s", (row_id,)) == (user,)
    triggers = _write(
        writer,
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal "
        "AND tgrelid IN ('subscription'::regclass, 'usage'::regclass)",
    )
    assert triggers == (2,)
    _write(writer, "UPDATE subscription SET plan = 'again' WHERE id = %s", (row_id,))
    assert len(listener.collect()) == 1  # one trigger, one notification
