"""relay's durable history in the database (SQL version 2), one transaction at a time: what is
numbered, when, and what reaches the NOTIFY stream — commit-time numbering, rollbacks and
savepoints, isolation levels, payloads of any size, the fallbacks that keep a write alive, and
the settings (outbox off, held off by a listener of version 1) reaching open sessions.

Concurrency has its own module (test_sql_concurrency.py); the epoch, cleanup and dormancy
theirs (test_sql_history.py); installs and upgrades theirs (test_sql_upgrade.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import psycopg2
import pytest

from relay.schema import SQL_VERSION, install_schema
from tests.outbox_support import frames_of, install_durable, publish, query, raw_listener
from tests.support import NotifyListener

pytestmark = pytest.mark.slow  # every test here boots PostgreSQL


@pytest.fixture
def db(empty_database: str) -> str:
    install_durable(empty_database)
    return empty_database


@pytest.fixture
def raw(db: str) -> Iterator[NotifyListener]:
    listener = raw_listener(db)
    try:
        yield listener
    finally:
        listener.conn.close()


@pytest.fixture
def app(db: str) -> Iterator[psycopg2.extensions.connection]:
    """An app's connection, in a transaction until it commits."""
    conn = psycopg2.connect(db)
    try:
        yield conn
    finally:
        conn.close()


def _outbox(db: str) -> list[tuple[int, str, int, str]]:
    return [(pos, channel, seq, payload) for pos, channel, seq, payload in query(
        db, "SELECT pos, channel, seq, payload::text FROM relay.outbox ORDER BY pos")]


def _other(db: str) -> psycopg2.extensions.connection:
    return psycopg2.connect(db)


def test_numbers_are_taken_at_commit_in_commit_order_not_publish_order(
        db: str, raw: NotifyListener) -> None:
    first, second = _other(db), _other(db)
    try:
        publish(first, "A", '{"published": 1}')   # publishes first, commits second
        publish(second, "A", '{"published": 2}')
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
    assert _outbox(db) == [(1, "A", 1, '{"published": 2}'), (2, "A", 2, '{"published": 1}')]
    assert [(f.kind, f.pos, f.seq, f.channel, f.body) for f in frames_of(raw)] == [
        ("m", 1, 1, "A", '{"published": 2}'), ("m", 2, 2, "A", '{"published": 1}')]


def test_a_transaction_numbers_its_messages_in_publish_order_per_channel(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    for channel, n in (("A", 1), ("B", 1), ("A", 2), ("C", 1), ("B", 2)):
        publish(app, channel, json.dumps({"n": n}))
    app.commit()
    assert [(c, s, json.loads(p)["n"]) for _, c, s, p in _outbox(db)] == [
        ("A", 1, 1), ("B", 1, 1), ("A", 2, 2), ("C", 1, 1), ("B", 2, 2)]
    assert [f.pos for f in frames_of(raw)] == [1, 2, 3, 4, 5]


def test_a_rolled_back_transaction_takes_its_messages_and_numbers_with_it(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    publish(app, "A", '{"gone": 1}')
    app.rollback()
    publish(app, "A", '{"kept": 1}')
    app.commit()
    assert [(c, s, p) for _, c, s, p in _outbox(db)] == [("A", 1, '{"kept": 1}')]
    assert [(f.seq, f.body) for f in frames_of(raw)] == [(1, '{"kept": 1}')]
    assert query(db, "SELECT count(*) FROM relay.staged") == [(0,)]


def test_savepoints_keep_what_was_released_and_drop_what_was_rolled_back(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    query(app, "SAVEPOINT first")
    publish(app, "A", '{"n": "arming, rolled back"}')  # the row whose trigger would fire
    query(app, "ROLLBACK TO SAVEPOINT first")
    publish(app, "A", '{"n": 1}')                      # must arm again
    query(app, "SAVEPOINT second")
    publish(app, "A", '{"n": "rolled back"}')
    query(app, "ROLLBACK TO SAVEPOINT second")
    query(app, "SAVEPOINT third")
    publish(app, "A", '{"n": 2}')
    query(app, "RELEASE SAVEPOINT third")
    # A PL/pgSQL exception block is a savepoint too.
    query(app, """DO $$ BEGIN
                      PERFORM relay_publish('A', '{"n": "in a failed block"}');
                      PERFORM 1 / 0;
                  EXCEPTION WHEN division_by_zero THEN NULL; END $$""")
    app.commit()
    assert [(s, p) for _, _, s, p in _outbox(db)] == [(1, '{"n": 1}'), (2, '{"n": 2}')]
    assert [(f.kind, f.seq) for f in frames_of(raw)] == [("m", 1), ("m", 2)]


def test_one_message_left_after_a_rolled_back_second_is_numbered_once(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    # COMMIT numbers a one-message transaction from its arming row (relay._on_commit's short
    # path) and more through relay._number_staged: the savepoint takes the second message and
    # the mark that sent COMMIT the long way.
    publish(app, "A", '{"n": 1}')
    query(app, "SAVEPOINT s")
    publish(app, "B", '{"n": "rolled back"}')
    query(app, "ROLLBACK TO SAVEPOINT s")
    app.commit()
    publish(app, "A", '{"n": 2}')
    publish(app, "B", '{"n": 3}')
    app.commit()
    assert [(c, s, p) for _, c, s, p in _outbox(db)] == [
        ("A", 1, '{"n": 1}'), ("A", 2, '{"n": 2}'), ("B", 1, '{"n": 3}')]
    assert [(f.kind, f.channel, f.seq) for f in frames_of(raw)] == [
        ("m", "A", 1), ("m", "A", 2), ("m", "B", 1)]
    assert query(db, "SELECT count(*) FROM relay.staged") == [(0,)]


def test_identical_messages_in_one_transaction_stay_two(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    publish(app, "A", '{"same": 1}')
    publish(app, "A", '{"same": 1}')
    app.commit()
    assert [(f.seq, f.body) for f in frames_of(raw)] == [(1, '{"same": 1}'), (2, '{"same": 1}')]


def test_a_publish_from_an_apps_deferred_trigger_during_commit_is_numbered_too(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    # The app's deferred trigger fires after relay's (its event was queued later), inside the
    # same COMMIT: its message arms relay again and gets a second firing.
    query(db, """
        CREATE TABLE audit (id serial PRIMARY KEY);
        CREATE FUNCTION audit_published() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM relay_publish('audit', '{"late": true}'); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER audit_late AFTER INSERT ON audit DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION audit_published();""")
    publish(app, "A", '{"early": true}')
    query(app, "INSERT INTO audit DEFAULT VALUES")
    app.commit()
    assert [(c, s) for _, c, s, _ in _outbox(db)] == [("A", 1), ("audit", 1)]
    assert [(f.kind, f.channel) for f in frames_of(raw)] == [("m", "A"), ("m", "audit")]


def test_a_commit_that_fails_after_numbering_leaves_a_pos_hole_and_no_seq_gap(
        db: str, app: psycopg2.extensions.connection) -> None:
    # An app's deferred check that fires after relay's trigger fails the COMMIT: the seq taken
    # goes back with the rollback (MVCC), the pos (a sequence) does not.
    query(db, """
        CREATE TABLE checked (id serial PRIMARY KEY, ok boolean);
        CREATE FUNCTION check_ok() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NOT NEW.ok THEN RAISE EXCEPTION 'not ok'; END IF; RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER must_be_ok AFTER INSERT ON checked DEFERRABLE INITIALLY
            DEFERRED FOR EACH ROW EXECUTE FUNCTION check_ok();""")
    publish(app, "A", '{"n": 1}')
    app.commit()
    publish(app, "A", '{"n": "failed"}')
    query(app, "INSERT INTO checked (ok) VALUES (false)")
    with pytest.raises(psycopg2.errors.RaiseException, match="not ok"):
        app.commit()
    app.rollback()
    publish(app, "A", '{"n": 2}')
    app.commit()
    assert [(pos, s, p) for pos, _, s, p in _outbox(db)] == [(1, 1, '{"n": 1}'),
                                                           (3, 2, '{"n": 2}')]


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_repeatable_read_and_serializable_writers_commit_and_are_numbered_by_settle(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener, level: str) -> None:
    publish(app, "A", '{"n": 1}')
    app.commit()
    query(app, f"SET TRANSACTION ISOLATION LEVEL {level}")
    publish(app, "A", '{"n": 2}')
    publish(app, "B", '{"n": 1}')
    app.commit()
    sync = frames_of(raw)
    assert [(f.kind, f.seq, f.channel) for f in sync] == [("m", 1, "A"), ("s", 0, "")]
    assert query(db, "SELECT count(*) FROM relay.outbox") == [(1,)]  # not numbered yet
    # The next READ COMMITTED commit numbers them first (earlier commits come first).
    publish(app, "A", '{"n": 3}')
    app.commit()
    assert [(c, s, json.loads(p)["n"]) for _, c, s, p in _outbox(db)] == [
        ("A", 1, 1), ("A", 2, 2), ("B", 1, 1), ("A", 3, 3)]
    assert query(db, "SELECT count(*) FROM relay.unsettled UNION ALL "
                     "SELECT count(*) FROM relay.commits") == [(0,), (0,)]
    # settle() is what a listener calls on kind s; with nothing to do it takes no lock.
    assert query(db, "SELECT relay.settle()") == [(0,)]


def test_a_read_only_transaction_publishes_unnumbered_instead_of_failing(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    query(app, "SET TRANSACTION READ ONLY")
    publish(app, "A", '{"ro": 1}')
    app.commit()
    assert [(f.kind, f.channel, f.body) for f in frames_of(raw)] == [("n", "A", '{"ro": 1}')]
    assert _outbox(db) == []


def test_the_trigger_fires_under_session_replication_role_replica(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    # pg_restore --disable-triggers and logical replication's apply run as "replica": an ordinary
    # trigger would not fire and the staged message would never be numbered.
    query(app, "SET session_replication_role = replica")
    publish(app, "A", '{"n": 1}')
    app.commit()
    assert [(f.kind, f.seq) for f in frames_of(raw)] == [("m", 1)]


@pytest.mark.parametrize("size", [8_000, 20_000, 1_000_000])
def test_a_payload_of_any_size_is_kept_whole(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener, size: int) -> None:
    body = json.dumps({"big": "x" * size})
    publish(app, "user_Usage_big", body)
    app.commit()
    [frame] = frames_of(raw)
    assert frame.kind == "r" and frame.body == ""  # the wake-up: the listener reads the row
    [(pos, channel, seq, tag, payload)] = query(db, "SELECT * FROM relay.read_from(%s, 1)",
                                                (frame.pos - 1,))
    assert (pos, channel, seq, f"{tag:08x}") == (frame.pos, frame.channel, frame.seq, frame.tag)
    assert payload == body


def test_the_frame_carries_the_message_up_to_7999_bytes_and_a_reference_from_8000(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    channel = "user_Usage_edge"
    publish(app, channel, '"x"')
    app.commit()
    [small] = frames_of(raw)
    head = len(small.channel) + len(str(small.pos)) + 30  # about; measured below
    sizes = {}
    for extra in range(7999 - head - 40, 7999 - head + 40):
        publish(app, channel, json.dumps("x" * extra))
        app.commit()
        [frame] = frames_of(raw)
        whole = f"r1 {frame.kind} {frame.pos} {frame.seq} {frame.tag} {len(channel)} {channel} "
        sizes[len(whole.encode()) + len(json.dumps("x" * extra))] = frame.kind
    assert sizes[7999] == "m" and sizes[8000] == "r"
    assert {k for s, k in sizes.items() if s <= 7999} == {"m"}
    assert {k for s, k in sizes.items() if s > 7999} == {"r"}


def test_turning_the_outbox_off_reaches_an_open_session_at_once(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    app.autocommit = True
    publish(app, "A", '{"n": 1}')  # compiles relay's functions in this session
    query(db, "SELECT relay.set('outbox', 'off')")
    publish(app, "A", '{"n": 2}')
    query(db, "SELECT relay.set('outbox', 'on')")
    publish(app, "A", '{"n": 3}')
    assert [(f.kind, f.body) for f in frames_of(raw)] == [
        ("m", '{"n": 1}'), ("c", "outbox"), ("n", '{"n": 2}'), ("c", "outbox"),
        ("m", '{"n": 3}')]
    assert [(s, p) for _, _, s, p in _outbox(db)] == [(1, '{"n": 1}'), (2, '{"n": 3}')]


def test_a_commit_that_cannot_get_the_commit_lock_in_time_commits_unnumbered(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    # Something holds relay's commit lock (as a transaction that ran SET CONSTRAINTS ALL
    # IMMEDIATE would, until it ends): a writer waits commit_lock_wait, then commits anyway.
    query(db, "SELECT relay.set('commit_lock_wait', '200 milliseconds')")
    holder = _other(db)
    try:
        query(holder, "SELECT pg_advisory_xact_lock(1919249505, 1)")
        publish(app, "A", '{"waited": 1}')
        app.commit()  # must not raise
        assert any("messages sent unnumbered" in n for n in app.notices)
    finally:
        holder.rollback()
        holder.close()
    assert [(f.kind, f.body) for f in frames_of(raw)][-1] == ("n", '{"waited": 1}')
    assert _outbox(db) == []


def test_the_apps_lock_timeout_bounds_the_wait_and_the_write_still_commits(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    holder = _other(db)
    try:
        query(holder, "SELECT pg_advisory_xact_lock(1919249505, 1)")
        query(app, "SET lock_timeout = '100ms'")
        publish(app, "A", '{"app timeout": 1}')
        app.commit()
    finally:
        holder.rollback()
        holder.close()
    assert [(f.kind, f.body) for f in frames_of(raw)] == [("n", '{"app timeout": 1}')]


def test_a_version_1_listener_holds_the_outbox_off_and_the_last_one_gone_releases_it(
        db: str, app: psycopg2.extensions.connection, raw: NotifyListener) -> None:
    old = psycopg2.connect(db, application_name="relay-listener")
    old.autocommit = True
    staged = _other(db)
    try:
        publish(staged, "A", '{"staged": "before the hold"}')  # in flight: not committed yet
        [(hello,)] = query(old, "SELECT relay.hello()")        # main's listener says hello
        assert hello["outbox"] is False
        staged.commit()  # numbered? no: the old listener would drop a numbered frame
        publish(app, "A", '{"while": "held"}')
        app.commit()
        [(durable,)] = query(db, "SELECT relay.hello(2)")
        assert durable["outbox"] is False and "version 1" in durable["outboxHeld"]
        assert [(f.kind, f.body) for f in frames_of(raw)] == [
            ("c", "outbox"), ("n", '{"staged": "before the hold"}'), ("n", '{"while": "held"}')]
    finally:
        staged.close()
        old.close()
    # A durable listener's periodic cleanup notices that the old one is gone.
    query(db, "SELECT relay.cleanup()")
    [(durable,)] = query(db, "SELECT relay.hello(2)")
    assert durable["outbox"] is True and durable["outboxHeld"] is None
    publish(app, "A", '{"after": "release"}')
    app.commit()
    assert [(f.kind, f.body) for f in frames_of(raw)] == [
        ("c", "outbox"), ("m", '{"after": "release"}')]


def test_until_a_durable_listener_says_hello_writers_keep_nothing(empty_database: str) -> None:
    # A fresh install (or an upgrade from version 1) with main's listener alone, or no relay
    # at all: writers send version 1's frames and the outbox stays empty, for ever if need be.
    db = empty_database
    install_schema(db)
    raw = raw_listener(db)
    app = psycopg2.connect(db)
    old = psycopg2.connect(db, application_name="relay-listener")
    old.autocommit = True
    try:
        publish(app, "A", '{"no relay": 1}')
        app.commit()
        [(hello,)] = query(old, "SELECT relay.hello()")  # main's listener connects
        assert hello["outbox"] is False
        old.close()                                     # and goes away again
        query(db, "SELECT relay.cleanup()")             # (nobody else would release it)
        publish(app, "A", '{"no relay": 2}')
        app.commit()
        assert _outbox(db) == []
        assert [(f.kind, f.body) for f in frames_of(raw)] == [
            ("n", '{"no relay": 1}'), ("n", '{"no relay": 2}')]

        [(durable,)] = query(db, "SELECT relay.hello(2)")  # the first durable listener
        assert durable["outbox"] is True and durable["outboxHeld"] is None
        publish(app, "A", '{"kept": 1}')
        app.commit()
        assert [(f.kind, f.body) for f in frames_of(raw)] == [
            ("c", "outbox"), ("m", '{"kept": 1}')]
        install_schema(db)  # a re-install does not hold it again
        publish(app, "A", '{"kept": 2}')
        app.commit()
        assert [payload for *_, payload in _outbox(db)] == ['{"kept": 1}', '{"kept": 2}']
    finally:
        app.close()
        old.close()
        raw.conn.close()


def test_hello_2_answers_what_a_durable_listener_needs(db: str) -> None:
    [(first,)] = query(db, "SELECT relay.hello(2)")
    assert {"protocol": 1, "version": SQL_VERSION, "outbox": True, "outboxSetting": "on",
            "outboxHeld": None, "notifyChannel": "relay", "retentionSeconds": 900,
            "dormantAfterSeconds": 3600, "headPos": None, "deletedUpto": 0}.items() \
        <= first.items()
    assert len(first["epoch"]) == 12 and first["rotated"] is None
    conn = psycopg2.connect(db)
    try:
        publish(conn, "A", '{"n": 1}')
        conn.commit()
    finally:
        conn.close()
    [(again,)] = query(db, "SELECT relay.hello(2)")
    assert again["epoch"] == first["epoch"] and again["headPos"] == again["issuedPos"] == 1


def test_a_listener_reads_rows_by_position_by_channel_and_heads(db: str) -> None:
    conn = psycopg2.connect(db)
    try:
        for channel, n in (("A", 1), ("B", 1), ("A", 2)):
            publish(conn, channel, json.dumps({"n": n}))
            conn.commit()
    finally:
        conn.close()
    assert [(p, c, s) for p, c, s, _, _ in query(db, "SELECT * FROM relay.read_from(1, 10)")] \
        == [(2, "B", 1), (3, "A", 2)]
    assert [(p, s) for p, s, _, _ in query(db, "SELECT * FROM relay.read_channel('A', 2, 10)")] \
        == [(3, 2)]
    heads = {c: (s, p) for c, s, _, p in query(db, "SELECT * FROM relay.heads(ARRAY['A', 'B', "
                                                   "'none'])")}
    assert heads == {"A": (2, 3), "B": (1, 2)}


def test_an_open_publishing_transaction_does_not_block_a_reinstall(
        db: str, app: psycopg2.extensions.connection) -> None:
    publish(app, "A", '{"open": 1}')  # holds its locks on relay.staged until it ends
    done = threading.Event()
    failure: list[BaseException] = []

    def reinstall() -> None:
        try:
            install_schema(db)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
        done.set()

    thread = threading.Thread(target=reinstall)
    thread.start()
    # The installer fails after lock_timeout (3 s) if it needs a lock the open transaction
    # holds; it must instead finish while the transaction stays open.
    assert done.wait(30) and not failure, failure
    app.commit()
    thread.join()
