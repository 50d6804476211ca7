"""No write ever fails or waits because of relay (ARCHITECTURE.md trap 13), under concurrency.

Numbering a channel inside the writer's transaction (a counter row locked at publish time)
would serialise that channel's writers until commit and deadlock two transactions that publish
to the same two channels in opposite order. relay only stages at publish and numbers at
COMMIT under one lock, so: (A, B) and (B, A) both commit; an open transaction that published
to a channel makes nobody wait; a hot channel keeps every commit; and the outbox holds exactly
the committed messages, each channel's seq gap-free in commit order, whatever the isolation
level. Every writer runs with ``deadlock_timeout = 50ms`` so that a deadlock would show at once.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from tests.outbox_support import (
    Writers,
    check_outbox,
    frames_of,
    install_durable,
    publish,
    query,
    raw_listener,
)
from tests.support import NotifyListener

pytestmark = pytest.mark.slow  # every test here boots PostgreSQL


@pytest.fixture
def db(empty_database: str) -> str:
    install_durable(empty_database)
    query(empty_database, "CREATE TABLE app (id bigserial PRIMARY KEY, k text, v int)")
    return empty_database


@pytest.fixture
def raw(db: str) -> Iterator[NotifyListener]:
    listener = raw_listener(db)
    try:
        yield listener
    finally:
        listener.conn.close()


def _connect(url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url)
    query(conn, "SET deadlock_timeout = '50ms'")
    return conn


def test_two_writers_publishing_to_a_b_and_b_a_both_commit(db: str, raw: NotifyListener) -> None:
    # The interleaving that deadlocks per-channel locks taken at publish: each holds its first
    # channel and then publishes to the other's.
    one, two = _connect(db), _connect(db)
    results: dict[str, str] = {}
    try:
        publish(one, "A", '{"by": 1}')
        publish(two, "B", '{"by": 2}')

        def second_half(conn: Any, channel: str, name: str) -> None:
            try:
                publish(conn, channel, json.dumps({"by": name}))
                conn.commit()
                results[name] = "committed"
            except psycopg2.Error as exc:
                conn.rollback()
                results[name] = str(exc).splitlines()[0]

        threads = [threading.Thread(target=second_half, args=(one, "B", "1")),
                   threading.Thread(target=second_half, args=(two, "A", "2"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        one.close()
        two.close()
    assert results == {"1": "committed", "2": "committed"}
    check_outbox(db, "", {"A": ['{"by": 1}', '{"by": "2"}'], "B": ['{"by": 2}', '{"by": "1"}']})


def test_many_writers_publishing_to_two_channels_in_both_orders_all_commit(db: str) -> None:
    writers = Writers(db)

    def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list[tuple[str, str]]) -> None:
        query(conn, "INSERT INTO app (k, v) VALUES ('ab', %s)", (i,))
        for channel in (("ab_A", "ab_B") if (k + i) % 2 else ("ab_B", "ab_A")):
            publish(conn, channel, json.dumps({"k": k, "i": i}), sent)

    writers.run(6, 60, body)
    assert writers.failures == []
    assert writers.commits == 360
    check_outbox(db, "ab_", writers.committed)
    assert query(db, "SELECT deadlocks FROM pg_stat_database "
                     "WHERE datname = current_database()") == [(0,)]


def test_an_open_transaction_holding_a_channel_makes_no_other_writer_wait(
        db: str, raw: NotifyListener) -> None:
    # With the channel's counter locked at publish, every other writer of the channel would
    # wait for the open transaction; lock_timeout turns such a wait into a failed write.
    long = _connect(db)
    try:
        publish(long, "long_A", '{"long": true}')
        writers = Writers(db, setup="SET lock_timeout = '300ms'")

        def body(conn: Any, rnd: random.Random, k: int, i: int,
                 sent: list[tuple[str, str]]) -> None:
            publish(conn, "long_A", json.dumps({"k": k, "i": i}), sent)

        writers.run(4, 25, body)
        assert writers.failures == []
        long.commit()  # numbered when it commits: after all the others
    finally:
        long.close()
    writers.committed["long_A"].append('{"long": true}')
    found = check_outbox(db, "long_", writers.committed)
    assert found["long_A"][-1] == (101, 101, '{"long": true}')


def test_a_hot_channel_with_rollbacks_keeps_every_commit_once_in_commit_order(
        db: str, raw: NotifyListener) -> None:
    # Each writer also increments one app row, under its row lock: the order of that counter
    # is the order the writers committed in, and seq must follow it exactly.
    query(db, "CREATE TABLE witness (k text PRIMARY KEY, v bigint NOT NULL DEFAULT 0); "
              "INSERT INTO witness VALUES ('w', 0)")
    writers = Writers(db)

    def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list[tuple[str, str]]) -> Any:
        query(conn, "SAVEPOINT s")
        publish(conn, "hot_H", json.dumps({"dropped": k}))
        query(conn, "ROLLBACK TO SAVEPOINT s")  # a rolled-back savepoint takes its message
        [(w,)] = query(conn, "UPDATE witness SET v = v + 1 WHERE k = 'w' RETURNING v")
        for extra in range(rnd.choice((1, 2))):
            publish(conn, "hot_H", json.dumps({"w": w, "extra": extra, "k": k}), sent)
        if rnd.random() < 0.15:
            return False  # rolled back: its witness increment goes too
        return None

    writers.run(8, 40, body)
    assert writers.failures == [] and writers.rollbacks > 0
    found = check_outbox(db, "hot_", writers.committed)
    witnessed = [(json.loads(p)["w"], json.loads(p)["extra"]) for _, _, p in found["hot_H"]]
    assert witnessed == sorted(witnessed)  # seq order = commit order
    stream = [f for f in frames_of(raw) if f.kind == "m"]
    assert [f.seq for f in stream] == list(range(1, len(found["hot_H"]) + 1))
    assert [f.pos for f in stream] == sorted(f.pos for f in stream)


def test_writers_that_hold_row_locks_and_publish_in_the_opposite_order_all_commit(
        db: str) -> None:
    query(db, "CREATE TABLE acct (id int PRIMARY KEY, owner text, v bigint NOT NULL DEFAULT 0);"
              "INSERT INTO acct SELECT g, 'u' || (g % 5), 0 FROM generate_series(1, 10) g")
    writers = Writers(db)

    def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list[tuple[str, str]]) -> None:
        a, b = sorted(rnd.sample(range(1, 11), 2))
        owners = query(conn, "SELECT owner FROM acct WHERE id IN (%s, %s) ORDER BY id "
                             "FOR UPDATE", (a, b))
        query(conn, "UPDATE acct SET v = v + 1 WHERE id IN (%s, %s)", (a, b))
        for (owner,) in reversed(owners):  # locks taken a, b; published b, a
            publish(conn, f"locks_{owner}", json.dumps({"a": a, "b": b, "k": k, "i": i}), sent)

    writers.run(6, 40, body)
    assert writers.failures == []
    check_outbox(db, "locks_", writers.committed)


def test_read_committed_repeatable_read_and_serializable_writers_mixed_all_commit(
        db: str) -> None:
    levels = (psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED,
              psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
              psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE)
    writers = Writers(db, isolation=lambda k: levels[k % 3])

    def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list[tuple[str, str]]) -> None:
        query(conn, "INSERT INTO app (k, v) VALUES ('iso', %s)", (k,))
        pair = ["iso_A", "iso_B"] if rnd.random() < 0.5 else ["iso_B", "iso_A"]
        for channel in pair[:rnd.choice((1, 2))]:
            publish(conn, channel, json.dumps({"k": k, "i": i}), sent)

    writers.run(6, 40, body)
    assert writers.failures == []  # no serialization failure of relay's making either
    check_outbox(db, "iso_", writers.committed)
    assert query(db, "SELECT count(*) FROM relay.unsettled UNION ALL "
                     "SELECT count(*) FROM relay.commits") == [(0,), (0,)]


def test_reassigning_updates_through_relay_notify_inside_a_function_all_commit(db: str) -> None:
    # An UPDATE that moves a row to another user publishes to both, in trigger order: two
    # users per commit, in any order, from inside the app's own function.
    query(db, """
        CREATE TABLE doc (id int PRIMARY KEY, user_id text, v int);
        CREATE TRIGGER relay_notify AFTER INSERT OR UPDATE OR DELETE ON doc
            FOR EACH ROW EXECUTE FUNCTION relay_notify('Doc');
        INSERT INTO doc SELECT g, 'd' || (g % 6), 0 FROM generate_series(1, 12) g;
        CREATE FUNCTION app_move(p_id int, p_to text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN UPDATE doc SET user_id = p_to, v = v + 1 WHERE id = p_id; END $$;""")
    before = dict(query(db, "SELECT channel, count(*) FROM relay.outbox GROUP BY 1"))
    writers = Writers(db)

    def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list[tuple[str, str]]) -> None:
        doc, to = rnd.randint(1, 12), f"d{rnd.randint(0, 5)}"
        [(old,)] = query(conn, "SELECT user_id FROM doc WHERE id = %s FOR UPDATE", (doc,))
        query(conn, "SELECT app_move(%s, %s)", (doc, to))
        if old != to:
            sent.append((f"user_Doc_{old}", ""))
        sent.append((f"user_Doc_{to}", ""))

    writers.run(6, 40, body)
    assert writers.failures == []
    counts = dict(query(db, "SELECT channel, count(*) FROM relay.outbox GROUP BY 1"))
    wanted = {c: before.get(c, 0) + len(v) for c, v in writers.committed.items()}
    assert {c: counts[c] for c in wanted} == wanted
    gaps = query(db, "SELECT channel FROM relay.outbox GROUP BY channel "
                     "HAVING max(seq) <> count(*)")
    assert gaps == []
