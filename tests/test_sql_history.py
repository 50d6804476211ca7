"""The durable history over time (SQL version 3): the epoch and what changes it, retention and
cleanup, what happens when no relay runs, a full NOTIFY queue, and a replica refused.

The epoch names the database's history: it must change whenever that history may have
diverged (a restore or copy into another database or cluster, a failover, a Neon branch) and
never on a re-install or a restart, or clients would drop real updates as duplicates (a new
epoch where none was due only costs one resync)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from relay.dev.postgres import EmbeddedPostgres
from relay.schema import install_schema
from tests.outbox_support import (
    Writers,
    frames_of,
    install_durable,
    publish,
    query,
    raw_listener,
)
from tests.support import execute

pytestmark = pytest.mark.slow  # every test here boots PostgreSQL


@pytest.fixture
def db(empty_database: str) -> str:
    install_durable(empty_database)
    return empty_database


def _hello(url: str, **session: str) -> dict[str, Any]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        for name, value in session.items():
            query(conn, "SELECT set_config(%s, %s, false)", (name, value))
        [(hello,)] = query(conn, "SELECT relay.hello(2)")
        return hello
    finally:
        conn.close()


def _publish(url: str, *messages: tuple[str, str]) -> None:
    conn = psycopg2.connect(url)
    try:
        for channel, payload in messages:
            publish(conn, channel, payload)
            conn.commit()
    finally:
        conn.close()


# ----- the epoch -----


def test_the_epoch_survives_a_reinstall_and_a_restart(own_postgres: EmbeddedPostgres) -> None:
    url = own_postgres.url
    first = _hello(url)
    _publish(url, ("A", '{"n": 1}'))
    install_schema(url)
    install_schema(url)
    assert _hello(url)["epoch"] == first["epoch"]
    own_postgres.restart()
    after = _hello(url)
    assert after["epoch"] == first["epoch"] and after["rotated"] is None
    assert after["headPos"] == 1  # the history is still there


def test_a_copy_of_the_database_starts_a_new_epoch_and_the_original_keeps_its_own(
        db: str, postgres_url: str) -> None:
    # CREATE DATABASE … TEMPLATE copies relay's tables into a database with another oid: what a
    # pg_dump/pg_restore into another database, or a branch, does. Numbers would repeat there.
    original = _hello(db)
    _publish(db, ("A", '{"n": 1}'))
    name = f"relay_copy_{uuid.uuid4().hex[:8]}"
    source = psycopg2.extensions.parse_dsn(db)["dbname"]
    execute(postgres_url, sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(source)))
    copy = psycopg2.extensions.make_dsn(db, dbname=name)
    try:
        listener = raw_listener(copy)
        try:
            branched = _hello(copy)
            assert branched["epoch"] != original["epoch"]
            assert branched["rotated"].startswith("database oid changed")
            [announced] = frames_of(listener)
            assert (announced.kind, announced.body) == ("e", branched["epoch"])
        finally:
            listener.conn.close()
        assert _hello(copy)["epoch"] == branched["epoch"]  # once, not on every hello
        assert _hello(db)["epoch"] == original["epoch"]
    finally:
        execute(postgres_url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(name)))


def test_a_neon_branch_starts_a_new_epoch(db: str) -> None:
    # Neon's pageserver keeps the system identifier for every branch; its compute sets
    # neon.timeline_id, different on each branch (simulated here).
    first = _hello(db, **{"neon.timeline_id": "3c1f0e"})
    assert first["rotated"] == "Neon timeline changed: a branch or a restore"
    same = _hello(db, **{"neon.timeline_id": "3c1f0e"})
    assert same["epoch"] == first["epoch"] and same["rotated"] is None
    branch = _hello(db, **{"neon.timeline_id": "9a77d2"})
    assert branch["epoch"] != first["epoch"]


def test_a_changed_timeline_or_system_identifier_starts_a_new_epoch(db: str) -> None:
    # What a failover or point-in-time recovery (timeline) and a restore into another cluster
    # (system identifier) leave behind: the fingerprint stored with the epoch differs.
    first = _hello(db)
    query(db, "UPDATE relay.meta SET timeline = timeline + 1")
    second = _hello(db)
    assert second["epoch"] != first["epoch"]
    assert second["rotated"].startswith("timeline changed")
    query(db, "UPDATE relay.meta SET system_identifier = system_identifier + 1")
    third = _hello(db)
    assert third["epoch"] != second["epoch"]
    assert third["rotated"].startswith("system identifier changed")


def test_dropping_relays_schema_and_installing_again_starts_a_new_epoch(db: str) -> None:
    first = _hello(db)
    query(db, "DROP SCHEMA relay CASCADE")
    install_schema(db)
    assert _hello(db)["epoch"] != first["epoch"]


def test_new_epoch_is_announced_to_every_listener(db: str) -> None:
    listener = raw_listener(db)
    try:
        [(epoch,)] = query(db, "SELECT relay.new_epoch('rewind detected by a listener')")
        assert [(f.kind, f.body) for f in frames_of(listener)] == [("e", epoch)]
        hello = _hello(db)
        assert (hello["epoch"], hello["epochReason"]) == (
            epoch, "rewind detected by a listener")
    finally:
        listener.conn.close()


def test_a_replica_is_refused(own_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    # A standby made with pg_basebackup: NOTIFY is not delivered there and nothing can be
    # written, so relay.hello() refuses it (the listener keeps retrying, /health says why).
    bin_dir = Path(own_postgres._bin_dir)  # noqa: SLF001 - the same binaries
    standby_dir = tmp_path / "standby"
    command = [str(bin_dir / "pg_basebackup"), "-d", own_postgres.url, "-D", str(standby_dir),
               "-R", "-X", "stream"]
    account = own_postgres._account  # noqa: SLF001
    if account is not None:  # root: PostgreSQL's files belong to its system user
        standby_dir.mkdir(mode=0o700)
        os.chown(standby_dir, *account)
        os.chown(tmp_path, *account)
        command = ["runuser", "-u", "pgserver", "--"] + command
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    (standby_dir / "relay.conf").unlink()  # the primary's port; the standby gets its own
    standby = EmbeddedPostgres(standby_dir)
    standby.start()
    try:
        conn = psycopg2.connect(standby.url)
        conn.autocommit = True
        try:
            assert query(conn, "SELECT pg_is_in_recovery()") == [(True,)]
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction, match="replica"):
                query(conn, "SELECT relay.hello(2)")
        finally:
            conn.close()
    finally:
        standby.stop("immediate")


# ----- retention and cleanup -----


def _age(url: str, upto_pos: int, age: str) -> None:
    query(url, "UPDATE relay.outbox SET created_at = now() - %s::interval WHERE pos <= %s",
          (age, upto_pos))


def test_cleanup_deletes_only_what_is_past_retention(db: str) -> None:
    _publish(db, *[("A", json.dumps({"n": n})) for n in range(1, 11)])
    _age(db, 6, "16 minutes")   # retention is 15 minutes by default
    query(db, "UPDATE relay.outbox SET created_at = now() - interval '14 minutes' "
              "WHERE pos IN (7, 8)")
    assert query(db, "SELECT relay.cleanup()") == [(6,)]
    assert [p for (p,) in query(db, "SELECT pos FROM relay.outbox ORDER BY pos")] == [
        7, 8, 9, 10]
    assert _hello(db)["deletedUpto"] == 6
    assert query(db, "SELECT relay.cleanup()") == [(0,)]
    # The channel's head outlives its rows: a cursor at seq 10 is still known to be current.
    assert query(db, "SELECT seq FROM relay.heads(ARRAY['A'])") == [(10,)]


def test_a_channel_whose_rows_all_expired_counts_on_from_its_head_on_every_path(
        db: str) -> None:
    """Writers read a channel's last seq from its newest outbox row; when cleanup deletes that
    row it keeps the head in relay.channel, so numbering never starts again at 1 (a client's
    cursor at seq 2 would take a new seq 1, 2 for duplicates) — on the one-message path, the
    small one, the set-based one (more than 8 messages) and relay.settle()'s."""
    _publish(db, *[(channel, json.dumps({"n": n})) for n in (1, 2) for channel in "ABCD"])
    tags = dict(query(db, "SELECT channel, tag FROM relay.outbox WHERE seq = 2"))
    _age(db, 8, "1 hour")
    assert query(db, "SELECT relay.cleanup()") == [(8,)]
    assert query(db, "SELECT count(*) FROM relay.outbox") == [(0,)]
    assert sorted(query(db, "SELECT channel, seq, tag, pos FROM relay.heads(%s)",
                        (list("ABCDE"),))) == [
        ("A", 2, tags["A"], 5), ("B", 2, tags["B"], 6), ("C", 2, tags["C"], 7),
        ("D", 2, tags["D"], 8)]
    conn = psycopg2.connect(db)
    try:
        publish(conn, "A", '{"n": 3}')  # one message: relay._on_commit's short path
        conn.commit()
        publish(conn, "B", '{"n": 3}')  # two: relay._number_staged's small path
        publish(conn, "B", '{"n": 4}')
        conn.commit()
        for n in range(3, 8):  # ten: the set-based statement, with a channel never seen
            publish(conn, "C", json.dumps({"n": n}))
            publish(conn, "E", json.dumps({"n": n - 2}))
        conn.commit()
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ)
        publish(conn, "D", '{"n": 3}')  # numbered later, by relay.settle()
        conn.commit()
    finally:
        conn.close()
    query(db, "SELECT relay.settle()")
    rows = query(db, "SELECT channel, seq, payload::text FROM relay.outbox ORDER BY pos")
    by_channel: dict[str, list[tuple[int, int]]] = {}
    for channel, seq, payload in rows:
        by_channel.setdefault(channel, []).append((seq, json.loads(payload)["n"]))
    assert by_channel == {"A": [(3, 3)], "B": [(3, 3), (4, 4)],
                          "C": [(n, n) for n in range(3, 8)],
                          "E": [(n, n) for n in range(1, 6)], "D": [(3, 3)]}
    # Every head now comes from the outbox again.
    assert sorted(query(db, "SELECT channel, seq FROM relay.heads(%s)", (list("ABCDE"),))) == [
        ("A", 3), ("B", 4), ("C", 7), ("D", 3), ("E", 5)]


def test_cleanup_works_in_bounded_batches(db: str) -> None:
    _publish(db, *[("A", json.dumps({"n": n})) for n in range(1, 8)])
    _age(db, 7, "1 hour")
    assert [query(db, "SELECT relay.cleanup(3)")[0][0] for _ in range(4)] == [3, 3, 1, 0]


def test_a_cleanup_batch_is_a_range_of_positions_holes_included(db: str) -> None:
    """A batch is deleted as the range of positions up to its last old row (by the primary
    key, whatever the outbox holds besides): a hole inside it, rows younger than retention
    after it, and the rows past the batch stay as they were."""
    conn = psycopg2.connect(db)
    try:
        for n in range(2000):  # one transaction: numbered by the set-based statement
            publish(conn, f"user_Subscription_{n % 500}", json.dumps({"n": n}))
        conn.commit()
    finally:
        conn.close()
    query(db, "DELETE FROM relay.outbox WHERE pos = 50")  # a hole inside the first batch
    _age(db, 300, "1 hour")
    query(db, "UPDATE relay.outbox SET created_at = now() WHERE pos = 250")  # young: a wall
    # 248 old rows before the young one (one of the first 249 positions is the hole)
    assert [query(db, "SELECT relay.cleanup(100)")[0][0] for _ in range(4)] == [100, 100, 48, 0]
    assert query(db, "SELECT min(pos), count(*) FROM relay.outbox") == [(250, 1751)]
    assert _hello(db)["deletedUpto"] == 249
    # the wall gone, the rest of the old rows go too
    query(db, "UPDATE relay.outbox SET created_at = now() - interval '1 hour' WHERE pos = 250")
    assert query(db, "SELECT relay.cleanup(100)") == [(51,)]
    assert query(db, "SELECT min(pos) FROM relay.outbox") == [(301,)]


def _staged_stats(conn: Any) -> tuple[int, int]:
    """relay.staged's live rows and sequential scans as the statistics count them, with this
    session's own counts flushed first."""
    query(conn, "SELECT pg_stat_force_next_flush()")  # flushed as the session goes idle
    query(conn, "SELECT pg_stat_clear_snapshot()")
    [(live, scans)] = query(conn, "SELECT n_live_tup, seq_scan FROM pg_stat_user_tables "
                                  "WHERE relid = 'relay.staged'::regclass")
    return live, scans


def test_cleanup_looks_for_left_over_staged_rows_only_when_some_stayed(db: str) -> None:
    """Every publishing transaction leaves a dead row in relay.staged until vacuum, and looking
    for rows a COMMIT left behind reads them all: cleanup looks only when the statistics
    count staged rows that stayed, and then removes them."""
    conn = psycopg2.connect(db)
    conn.autocommit = True
    try:
        _publish(db, *[("A", json.dumps({"n": n})) for n in range(20)])  # staged, then taken
        time.sleep(0.2)  # the writer's session has ended and flushed its counts
        live, scans = _staged_stats(conn)
        assert live == 0
        assert query(conn, "SELECT relay.cleanup()") == [(0,)]
        assert _staged_stats(conn) == (0, scans)  # relay.staged not read
        # A COMMIT whose trigger did not run (disabled by hand, as while debugging) leaves its
        # message staged: visible, and never to be numbered.
        query(conn, "ALTER TABLE relay.staged DISABLE TRIGGER relay_commit")
        try:
            _publish(db, ("A", '{"left": "behind"}'))
        finally:
            query(conn, "ALTER TABLE relay.staged ENABLE ALWAYS TRIGGER relay_commit")
        deadline = time.monotonic() + 10
        while _staged_stats(conn)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the writer's counts arrive as its session ends
        assert query(conn, "SELECT count(*) FROM relay.staged") == [(1,)]
        assert query(conn, "SELECT relay.cleanup()") == [(0,)]
        assert query(conn, "SELECT count(*) FROM relay.staged") == [(0,)]
        assert _staged_stats(conn)[0] == 0
    finally:
        conn.close()


def test_a_shorter_retention_setting_deletes_sooner(db: str) -> None:
    _publish(db, ("A", '{"n": 1}'), ("A", '{"n": 2}'))
    _age(db, 1, "2 minutes")
    assert query(db, "SELECT relay.cleanup()") == [(0,)]
    query(db, "SELECT relay.set('retention', '1 minute')")
    assert query(db, "SELECT relay.cleanup()") == [(1,)]
    assert _hello(db)["retentionSeconds"] == 60


def test_one_cleaner_at_a_time_and_the_second_never_waits(db: str) -> None:
    first = psycopg2.connect(db)
    try:
        assert query(first, "SELECT relay.cleanup()") == [(0,)]  # its transaction stays open
        started = time.monotonic()
        assert query(db, "SELECT relay.cleanup()") == [(-1,)]
        assert time.monotonic() - started < 2.0
    finally:
        first.rollback()
        first.close()


def test_an_open_cleanup_makes_no_writer_wait(db: str) -> None:
    _publish(db, *[("clean_A", json.dumps({"n": n})) for n in range(1, 51)])
    _age(db, 50, "1 hour")
    cleaner = psycopg2.connect(db)
    try:
        assert query(cleaner, "SELECT relay.cleanup(20)") == [(20,)]  # and stays open
        writers = Writers(db, setup="SET lock_timeout = '300ms'")

        def body(conn: Any, *_: Any) -> None:
            publish(conn, "clean_A", '{"more": 1}')

        writers.run(3, 10, body)
        assert writers.failures == []
    finally:
        cleaner.commit()
        cleaner.close()


# ----- no relay running -----


def test_with_no_relay_alive_for_dormant_after_writers_stop_keeping_messages(db: str) -> None:
    listener = raw_listener(db)
    try:
        first = _hello(db)
        _publish(db, ("A", '{"n": 1}'))
        # The last sign of life of any relay is two hours old (dormant_after is one hour).
        query(db, "SELECT setval('relay.heartbeat', "
                  "extract(epoch FROM now() - interval '2 hours')::bigint)")
        _publish(db, ("A", '{"n": 2}'), ("A", '{"n": 3}'))
        assert [(f.kind, f.body) for f in frames_of(listener)] == [
            ("m", '{"n": 1}'), ("n", '{"n": 2}'), ("n", '{"n": 3}')]
        assert query(db, "SELECT count(*) FROM relay.outbox") == [(1,)]  # did not grow
        back = _hello(db)  # the next relay: messages were not kept, so a new epoch
        assert back["epoch"] != first["epoch"] and back["rotated"].startswith("no relay")
        _publish(db, ("A", '{"n": 4}'))
        assert [(f.kind, f.seq) for f in frames_of(listener)] == [("e", 0), ("m", 2)]
    finally:
        listener.conn.close()


def test_cleanup_is_a_sign_of_life(db: str) -> None:
    query(db, "SELECT setval('relay.heartbeat', "
              "extract(epoch FROM now() - interval '2 hours')::bigint)")
    query(db, "SELECT relay.cleanup()")
    assert query(db, "SELECT extract(epoch FROM now())::bigint - last_value < 60 "
                     "FROM relay.heartbeat") == [(True,)]


# ----- a full NOTIFY queue -----


@pytest.fixture
def small_queue(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL of its own whose NOTIFY queue holds 512 KB (the least it can)."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("needs the embedded PostgreSQL (a setting of its own)")
    server = EmbeddedPostgres(tmp_path / "pg", settings={"max_notify_queue_pages": 64})
    server.start()
    try:
        if query(server.url, "SELECT current_setting('server_version_num')::int")[0][0] < 170000:
            pytest.skip("max_notify_queue_pages needs PostgreSQL 17 or later")
        install_durable(server.url)
        yield server.url
    finally:
        server.stop("immediate")


def test_a_full_notify_queue_fails_plain_notify_writers_but_not_relays(small_queue: str) -> None:
    url = small_queue
    query(url, "CREATE TABLE app (id serial PRIMARY KEY)")
    stuck = psycopg2.connect(url)  # LISTENs, then idles in a transaction: the queue never shrinks
    query(stuck, "LISTEN relay; LISTEN plain")
    stuck.commit()
    query(stuck, "SELECT 1")
    reader = psycopg2.connect(url)
    reader.autocommit = True
    writer = psycopg2.connect(url)
    pad = "x" * 3000
    try:
        plain_failed = None
        for i in range(1000):
            query(writer, "INSERT INTO app DEFAULT VALUES")
            query(writer, "SELECT pg_notify('plain', %s)", (f"{i} {pad}",))
            try:
                writer.commit()
            except psycopg2.Error as exc:
                writer.rollback()
                plain_failed = str(exc)
                break
        assert plain_failed is not None and "queue" in plain_failed.lower()

        committed = []
        for i in range(300):
            query(writer, "INSERT INTO app DEFAULT VALUES")
            publish(writer, f"user_Q_{i % 7}", json.dumps({"i": i, "pad": pad}))
            writer.commit()  # must not raise: relay sends no NOTIFY above 90 % usage
            committed.append(i)
        # A listener that sees the queue over half full reads the outbox instead.
        [(usage,)] = query(reader, "SELECT pg_notification_queue_usage()")
        assert usage > 0.9
        rows = query(reader, "SELECT payload FROM relay.read_from(0, 1000)")
        assert [json.loads(p)["i"] for (p,) in rows] == committed
    finally:
        stuck.rollback()
        stuck.close()
        reader.close()
        writer.close()


def test_notify_frames_go_out_again_once_the_queue_drains(small_queue: str) -> None:
    listener = raw_listener(small_queue)
    try:
        _publish(small_queue, ("A", '{"n": 1}'))
        assert [(f.kind, f.seq) for f in frames_of(listener)] == [("m", 1)]
    finally:
        listener.conn.close()

