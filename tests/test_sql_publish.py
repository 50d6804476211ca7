"""relay's SQL against a real PostgreSQL: relay_publish's wire frame on the shared channel,
its size and name limits, the settings, the install (its announcement, its warnings about an
app's own per-user pg_notify, its version guard), and the hardening of issue 14 item 8: every
function's search_path pinned, calls schema-qualified, an app role that can publish without
any privilege on schema relay."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from relay.listener import frames
from relay.schema import SQL_VERSION, NewerSchemaError, install_schema, schema_sql
from tests.outbox_support import install_durable
from tests.support import ROOT, NotifyListener, execute, parse_frame

pytestmark = pytest.mark.slow  # every test here boots real processes

LIMIT = 8000  # NOTIFY refuses a payload of this many bytes or more


@pytest.fixture
def db(empty_database: str) -> str:
    install_durable(empty_database)
    return empty_database


@pytest.fixture
def db_off(db: str) -> str:
    """relay's SQL with the outbox turned off: version 1's behaviour, numbered by listeners."""
    execute(db, "SELECT relay.set('outbox', 'off')")
    return db


@pytest.fixture
def raw(db: str) -> Iterator[NotifyListener]:
    """A connection LISTENing relay's channel, reading the frames themselves."""
    conn = psycopg2.connect(db)
    conn.autocommit = True
    try:
        listener = NotifyListener(conn, shared=None)
        listener.listen("relay")
        yield listener
    finally:
        conn.close()


@pytest.fixture
def published(db: str) -> Iterator[NotifyListener]:
    """A connection LISTENing relay's channel, reading the messages in its frames."""
    conn = psycopg2.connect(db)
    conn.autocommit = True
    try:
        yield NotifyListener(conn)
    finally:
        conn.close()


def _frames(listener: NotifyListener, channel: str = "relay") -> list[str]:
    """Every payload NOTIFYed on ``channel`` up to the sentinel."""
    if channel not in listener.channels:
        listener.listen(channel)
    return [p.payload for p in listener.collect() if p.channel == channel]


def _run(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[str]:
    """Run in one transaction; the notices (warnings) it raised."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement, params or None)
        return list(conn.notices)
    finally:
        conn.close()


def test_publish_sends_one_numbered_r1_frame_on_the_shared_channel(
        db: str, raw: NotifyListener) -> None:
    _run(db, "SELECT relay_publish('user_Subscription_42', '{\"plan\": \"pro\"}')")
    [payload] = _frames(raw)
    assert re.fullmatch(r'r1 m 1 1 [0-9a-f]{8} 20 user_Subscription_42 \{"plan": "pro"\}',
                        payload), payload
    frame = frames.parse(payload)
    assert frame is not None
    assert (frame.kind, frame.pos, frame.seq, frame.channel, json.loads(frame.body)) == (
        "m", 1, 1, "user_Subscription_42", {"plan": "pro"})


def test_with_the_outbox_off_publish_sends_an_unnumbered_frame(
        db_off: str, raw: NotifyListener) -> None:
    _run(db_off, "SELECT relay_publish('user_Subscription_42', '{\"plan\": \"pro\"}')")
    [payload] = _frames(raw)
    assert re.fullmatch(r'r1 n 0 0 [0-9a-f]{8} 20 user_Subscription_42 \{"plan": "pro"\}',
                        payload), payload
    frame = frames.parse(payload)
    assert frame is not None
    assert (frame.kind, frame.channel, json.loads(frame.body)) == (
        "n", "user_Subscription_42", {"plan": "pro"})


@pytest.mark.parametrize("channel", ["user \"Sub\" 'é' ü_42", "user_Subscription_ÄbC",
                                     "with  two spaces", "ü" * 31])
def test_the_channel_travels_as_characters_whatever_they_are(
        db: str, raw: NotifyListener, channel: str) -> None:
    assert len(channel.encode()) <= 63
    _run(db, "SELECT relay_publish(%s, '[1]')", (channel,))
    [payload] = _frames(raw)
    assert f" {len(channel)} {channel} [1]" in payload  # chlen counts characters, not bytes
    frame = frames.parse(payload)
    assert frame is not None and (frame.channel, frame.body) == (channel, "[1]")
    assert parse_frame(payload) == ("m", channel, "[1]")


def test_outbox_off_payload_boundary_7999_bytes_whole_8000_truncated(
        db_off: str, raw: NotifyListener) -> None:
    channel = "user_Usage_bound"
    head = len(f"r1 n 0 0 00000000 {len(channel)} {channel} ".encode())
    for size, whole in ((LIMIT - 1, True), (LIMIT, False), (LIMIT + 5000, False)):
        body = json.dumps("x" * (size - head - 2))  # a JSON string: its quotes count
        assert head + len(body.encode()) == size
        assert _run(db_off, "SELECT relay_publish(%s, %s::json)", (channel, body)) == []
        [payload] = _frames(raw)
        if whole:
            assert len(payload.encode()) == LIMIT - 1 and payload.endswith(body)
        else:
            assert payload.endswith(f"{channel} " + '{"truncated":true}')


def test_multibyte_payloads_are_measured_in_bytes(db_off: str, raw: NotifyListener) -> None:
    body = json.dumps("é" * 3990, ensure_ascii=False)  # 3,992 characters, 7,982 bytes
    _run(db_off, "SELECT relay_publish('user_Usage_mb', %s::json)", (body,))
    [payload] = _frames(raw)
    assert payload.endswith('{"truncated":true}')


def test_channel_limits_warn_and_never_fail_the_write(db: str, raw: NotifyListener) -> None:
    ok = "c" * 63
    _run(db, "SELECT relay_publish(%s, '1')", (ok,))
    assert parse_frame(_frames(raw)[0]) == ("m", ok, "1")
    for channel, payload in (("c" * 64, "1"), ("é" * 32, "1"), ("", "1"), (None, "1"),
                             ("user_Usage_x", None)):
        notices = _run(db, "SELECT relay_publish(%s, %s::json)", (channel, payload))
        assert any("not published" in notice for notice in notices), (channel, notices)
        assert _frames(raw) == []


def test_install_announces_itself_on_the_shared_channel(db: str, raw: NotifyListener) -> None:
    install_schema(db)
    assert [parse_frame(p) for p in _frames(raw)] == [("i", "", str(SQL_VERSION))]


def test_legacy_notify_also_sends_the_bare_payload_on_the_channel(
        db: str, raw: NotifyListener, published: NotifyListener) -> None:
    _run(db, "SELECT relay.set('legacy_notify', 'on')")
    assert [parse_frame(p) for p in _frames(raw)] == [("c", "", "legacy_notify")]
    published.listen("user_Usage_old")
    _run(db, "SELECT relay_publish('user_Usage_old', '{\"n\": 1}')")
    received = published.collect()
    assert [(p.via, p.payload) for p in received] == [("direct", '{"n": 1}'),
                                                      ("shared", '{"n": 1}')]
    _run(db, "SELECT relay.set('legacy_notify', 'off')")
    _run(db, "SELECT relay_publish('user_Usage_old', '{\"n\": 2}')")
    assert [p.via for p in published.collect()] == ["shared"]


def test_a_new_notify_channel_is_announced_on_the_old_one_and_used_at_once(
        db: str, raw: NotifyListener) -> None:
    # An app session opened before the change: its cached plans must not keep the old name.
    app = psycopg2.connect(db)
    app.autocommit = True
    try:
        with app.cursor() as cursor:
            cursor.execute("SELECT relay_publish('user_Usage_nc', '1')")
        assert len(_frames(raw)) == 1
        install_schema(db, notify_channel="relay_v2")
        assert [parse_frame(p) for p in _frames(raw)] == [("i", "", str(SQL_VERSION)),
                                                           ("c", "", "notify_channel")]
        raw.listen("relay_v2")
        with app.cursor() as cursor:
            cursor.execute("SELECT relay_publish('user_Usage_nc', '2')")
        received = raw.collect()
        assert [(p.channel, parse_frame(p.payload)) for p in received] == [
            ("relay_v2", ("m", "user_Usage_nc", "2"))]
    finally:
        app.close()


def test_every_relay_function_pins_its_search_path(db: str) -> None:
    conn = psycopg2.connect(db)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("""
                SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p
                JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'relay' OR (n.nspname = 'public' AND p.proname LIKE 'relay%')""")
            functions = dict(cursor.fetchall())
    finally:
        conn.close()
    assert len(functions) >= 10 and "relay_publish(text,json)" in functions
    unpinned = {name: config for name, config in functions.items()
                if "search_path=pg_catalog, pg_temp" not in (config or [])}
    assert unpinned == {}


def test_an_earlier_schema_in_the_writers_search_path_cannot_shadow_relays_calls(
        db: str, published: NotifyListener) -> None:
    # A role that can create objects in a schema searched before public plants look-alikes
    # of what relay's trigger calls. Pinned search_path and qualified calls ignore them.
    _run(db, """
        CREATE TABLE note (id serial PRIMARY KEY, user_id text);
        CREATE TRIGGER relay_notify AFTER INSERT ON note
            FOR EACH ROW EXECUTE FUNCTION relay_notify('Note');
        CREATE SCHEMA evil;
        CREATE TABLE evil.called (what text);
        CREATE FUNCTION evil.relay_notify_owner(text, text, text, text, json, text, boolean)
            RETURNS void LANGUAGE sql AS $$ INSERT INTO evil.called VALUES ('owner') $$;
        CREATE FUNCTION evil.relay_publish(text, json)
            RETURNS void LANGUAGE sql AS $$ INSERT INTO evil.called VALUES ('publish') $$;
        CREATE FUNCTION evil._notify_unnumbered(text, text, text)
            RETURNS void LANGUAGE sql AS $$ INSERT INTO evil.called VALUES ('notify') $$;
        CREATE FUNCTION evil.row_to_json(anyelement)
            RETURNS json LANGUAGE sql AS $$ SELECT '{"user_id": "victim"}'::json $$;""")
    published.listen("user_Note_owner")
    _run(db, "SET search_path = evil, public; INSERT INTO note (user_id) VALUES ('owner')")
    [note] = published.collect()
    assert note.via == "shared" and json.loads(note.payload)["row"]["user_id"] == "owner"
    conn = psycopg2.connect(db)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM evil.called")
            assert cursor.fetchone() == (0,)
    finally:
        conn.close()


def test_an_app_role_without_privileges_on_schema_relay_publishes_and_nothing_more(
        db: str, published: NotifyListener) -> None:
    role = sql.Identifier(f"app_{secrets.token_hex(4)}")
    password = secrets.token_hex(8)
    execute(db, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
    try:
        execute(db, sql.SQL("CREATE TABLE item (id serial PRIMARY KEY, user_id text); "
                            "GRANT ALL ON item, item_id_seq TO {}; "
                            "CREATE TRIGGER relay_notify AFTER INSERT ON item FOR EACH ROW "
                            "EXECUTE FUNCTION relay_notify('Item')").format(role))
        app = psycopg2.extensions.make_dsn(db, user=role.strings[0], password=password)
        published.listen("user_Item_u1")
        published.listen("user_Usage_u1")
        _run(app, "INSERT INTO item (user_id) VALUES ('u1')")
        _run(app, "SELECT relay_publish('user_Usage_u1', '{\"direct\": 1}')")
        assert [p.channel for p in published.collect()] == ["user_Item_u1", "user_Usage_u1"]
        for forbidden in ("SELECT * FROM relay.settings", "SELECT relay.set('legacy_notify', "
                          "'on')", "SELECT relay.hello()", "SELECT relay.hello(2)",
                          "SELECT relay._publish('user_Usage_u1', '1', NULL)",
                          # the history keeps row data: readable by relay's role alone
                          "SELECT * FROM relay.outbox", "SELECT * FROM relay.read_from(0, 10)",
                          "SELECT * FROM relay.read_channel('user_Item_u1', 1, 10)",
                          "SELECT relay.cleanup()", "SELECT relay.new_epoch('forged')"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                _run(app, forbidden)
    finally:
        execute(db, sql.SQL("DROP TABLE IF EXISTS item; DROP OWNED BY {}; DROP ROLE {}").format(
            role, role))


def test_install_refuses_to_downgrade_a_newer_relay_sql(db: str) -> None:
    _run(db, f"UPDATE relay.meta SET version = {SQL_VERSION + 1}")
    with pytest.raises(NewerSchemaError, match="refusing to downgrade"):
        install_schema(db)  # relay/schema.py reads the version first
    # The SQL's own guard, for an installer racing it (or the script run as a migration).
    with pytest.raises(psycopg2.errors.RaiseException, match="refusing to downgrade"):
        _run(db, schema_sql())


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "RELAY_CHANNELS", "RELAY_NOTIFY_CHANNEL")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_db_install_names_an_apps_own_per_user_pg_notify_functions(empty_database: str) -> None:
    _run(empty_database, """
        CREATE TABLE "Subscription" (id text PRIMARY KEY, "userId" text);
        CREATE FUNCTION notify_subscription() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('user_Subscription_' || NEW."userId", row_to_json(NEW)::text);
            RETURN NEW;
        END $$;
        CREATE TRIGGER subscription_changed AFTER INSERT OR UPDATE ON "Subscription"
            FOR EACH ROW EXECUTE FUNCTION notify_subscription();
        CREATE FUNCTION notify_usage(uid text) RETURNS void LANGUAGE sql AS $$
            SELECT pg_notify('user_' || 'Usage_' || uid, '{}') $$;
        CREATE FUNCTION bust_cache() RETURNS void LANGUAGE sql AS $$
            SELECT pg_notify('cache', 'bust') $$;""")
    result = _relay_cli("db", "install", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2, result.stderr
    assert "function notify_subscription() (run by trigger subscription_changed ON " \
           '"Subscription")' in warnings[0]
    assert "function notify_usage(text)" in warnings[1]
    for line in warnings:
        assert "RELAY_USER_CHANNELS=listen" in line and "db trigger" in line
    assert "bust_cache" not in result.stderr  # its channel is nobody's user channel

    quiet = _relay_cli("db", "install", DATABASE_URL=empty_database,
                       RELAY_CHANNELS="account_{userId}")
    assert quiet.returncode == 0 and quiet.stderr == ""  # not relay's channels: not relay's


def test_an_upgrade_from_before_version_1_keeps_the_old_relays_hearing(
        empty_database: str) -> None:
    # What relay's SQL before version 1 left in an app's database: relay_notify_owner, which
    # pg_notify-ed each user's channel, and the relays of that version LISTEN per user.
    _run(empty_database, """
        CREATE FUNCTION relay_notify_owner(text, text, text, text, json, text, boolean)
            RETURNS void LANGUAGE sql AS $$ SELECT $$;
        CREATE TABLE note (id serial PRIMARY KEY, user_id text);""")
    result = _relay_cli("db", "install", DATABASE_URL=empty_database)
    assert result.returncode == 0, result.stderr
    assert "legacy_notify is on" in result.stdout and "'off'" in result.stdout
    _run(empty_database, "CREATE TRIGGER relay_notify AFTER INSERT ON note FOR EACH ROW "
                         "EXECUTE FUNCTION relay_notify('Note')")
    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    try:
        old_relay = NotifyListener(conn, shared=None)  # LISTENs the user's own channel only
        old_relay.listen("user_Note_u1")
        _run(empty_database, "INSERT INTO note (user_id) VALUES ('u1')")
        [heard] = old_relay.collect()
        assert json.loads(heard.payload)["row"] == {"id": 1, "user_id": "u1"}
    finally:
        conn.close()
    again = _relay_cli("db", "install", DATABASE_URL=empty_database)  # a later deploy
    assert "legacy_notify is on" in again.stdout  # kept until the operator turns it off
    _run(empty_database, "SELECT relay.set('legacy_notify', 'off')")
    assert "legacy_notify" not in _relay_cli("db", "install",
                                             DATABASE_URL=empty_database).stdout


def test_a_fresh_install_leaves_legacy_notify_off(db: str) -> None:
    conn = psycopg2.connect(db)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT value FROM relay.settings WHERE name = 'legacy_notify'")
            assert cursor.fetchone() == ("off",)
    finally:
        conn.close()
