"""The listener in front of relay's durable history (issue 13): NOTIFY is a wake-up, the outbox
is the truth.

Real PostgreSQL with relay's SQL (version 2, outbox on), real relays, real WebSocket clients:
a payload too big for NOTIFY arrives whole; holes and big transactions are filled by reading
the outbox; after the listener's database connection is cut, or the listener is killed, what
was committed meanwhile arrives, in order, with no resync; a cursor resumes on another
instance; what cannot be served (past retention, another history, an old cursor) is one
``resync`` with its reason.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from relay.dev.postgres import EmbeddedPostgres
from tests.outbox_support import Writers, publish, query
from tests.streams import MessageReader, NotifyWriter, running
from tests.support import (
    Client,
    RelayProcess,
    assert_marker_comes_next,
    execute,
    free_port,
    notify,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


def _updates(client: Client, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The next ``count`` messages, which must all be updates (a resync fails the test)."""
    got = []
    for _ in range(count):
        message = client.recv(timeout)
        assert message is not None, f"only {len(got)} of {count} updates arrived"
        assert message["type"] == "update", message
        got.append(message)
    return got


def _cursors(client: Client, updates: list[dict[str, Any]]) -> dict[str, str]:
    cursors = dict(client.connected["cursors"])
    for update in updates:
        cursors[update["channel"]] = update["cursor"]
    return cursors


def _listener_backend(url: str) -> int:
    rows = query(url, "SELECT pid FROM pg_stat_activity WHERE application_name = "
                       "'relay-listener' AND datname = current_database()")
    assert len(rows) == 1, rows
    return int(rows[0][0])


@contextmanager
def _database_closed(url: str) -> Iterator[None]:
    """New connections to the test database are refused meanwhile (existing ones stay)."""
    def allow(allowed: bool) -> None:
        conn = psycopg2.connect(url.rsplit("/", 1)[0] + "/template1")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"ALTER DATABASE postgres ALLOW_CONNECTIONS {str(allowed).lower()}")
        finally:
            conn.close()

    allow(False)
    try:
        yield
    finally:
        allow(True)


def _durable(relay: RelayProcess) -> dict[str, Any]:
    health = wait_for(lambda: (h := relay.fresh_health()[1])["listener"].get("history")
                      == "durable" and h, 10)
    return health["listener"]


# ----- 1. NOTIFY is a wake-up -----


def test_a_20_kb_payload_arrives_whole(relay_factory: Callable[..., RelayProcess],
                                       postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect("dlbig1")
    small = {"n": 1}
    big = {"n": 2, "blob": "x" * 20_000}  # kind r: the listener reads the row
    notify(postgres_url, "user_Usage_dlbig1", json.dumps(small))
    notify(postgres_url, "user_Usage_dlbig1", json.dumps(big))
    notify(postgres_url, "user_Usage_dlbig1", '{"n": 3}')
    first, second, third = _updates(client, 3)
    assert first["data"] == small and second["data"] == big and third["data"] == {"n": 3}
    assert [u["seq"] for u in (first, second, third)] == [1, 2, 3]
    assert_marker_comes_next(postgres_url, client)
    client.close()


def test_seq_and_cursor_come_from_the_database(relay_factory: Callable[..., RelayProcess],
                                               postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect("dlnum1")
    channel = "user_Usage_dlnum1"
    notify(postgres_url, channel, '{"n": 1}')
    update = _updates(client, 1)[0]
    [(seq, tag)] = query(postgres_url, "SELECT seq, tag FROM relay.outbox WHERE channel = %s",
                          (channel,))
    [(epoch,)] = query(postgres_url, "SELECT epoch FROM relay.meta")
    assert update["seq"] == seq
    assert update["cursor"] == f"{epoch}:{seq}:{tag:08x}"
    assert client.connected["epoch"] == epoch
    client.close()


def test_writers_with_rollbacks_and_big_transactions_arrive_once_gap_free_in_commit_order(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Several writers on one channel, READ COMMITTED and REPEATABLE READ (numbered later,
    announced by a sync frame), some transactions rolled back, some too big for one NOTIFY per
    message (one sync frame): every committed message exactly once, seq 1…n, commit order."""
    relay = relay_factory()
    client = relay.connect("dlmix1")
    channel = "user_Usage_dlmix1"
    execute(postgres_url, "SELECT relay.set('notify_per_message_max', '3')")
    try:
        def body(conn: Any, rnd: random.Random, k: int, i: int, sent: list) -> bool:
            for j in range(rnd.choice((1, 1, 2, 5))):  # 5 > notify_per_message_max: sync
                publish(conn, channel, json.dumps({"w": k, "i": i, "j": j}), sent)
            return rnd.random() > 0.2  # a fifth rolled back

        writers = Writers(postgres_url, isolation=lambda k: (
            psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ if k == 3
            else psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED))
        writers.run(4, 25, body)
        assert not writers.failures
        committed = writers.committed[channel]
        assert writers.rollbacks > 0 and len(committed) > 40
        updates = _updates(client, len(committed))
        assert_marker_comes_next(postgres_url, client)
    finally:
        execute(postgres_url, "SELECT relay.set('notify_per_message_max', '100')")
    rows = query(postgres_url, "SELECT seq, payload::text FROM relay.outbox WHERE channel = %s "
                                "AND seq <= %s ORDER BY pos", (channel, len(committed)))
    assert [u["seq"] for u in updates] == list(range(1, len(committed) + 1))
    assert [u["seq"] for u in updates] == [seq for seq, _ in rows]  # commit order
    assert [u["data"] for u in updates] == [json.loads(p) for _, p in rows]
    assert sorted(json.dumps(u["data"], sort_keys=True) for u in updates) == sorted(
        json.dumps(json.loads(p), sort_keys=True) for p in committed)
    client.close()


# ----- 2. catch-up after a reconnect or a restart -----


def test_after_the_listeners_backend_is_terminated_30_updates_arrive_in_order_no_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    clients = {user: relay.connect(user) for user in ("dlcut1", "dlcut2", "dlcut3")}
    before = _durable(relay)
    backend = _listener_backend(postgres_url)
    writer = psycopg2.connect(postgres_url)  # open before the database closes
    writer.autocommit = True
    try:
        with _database_closed(postgres_url), writer.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
            wait_for(lambda: relay.fresh_health()[1]["listener"]["database"] == "disconnected",
                     10)
            for i in range(30):
                user = ("dlcut1", "dlcut2", "dlcut3")[i % 3]
                cur.execute("SELECT relay_publish(%s, %s::json)",
                            (f"user_Usage_{user}", json.dumps({"i": i})))
    finally:
        writer.close()
    for index, client in enumerate(clients.values()):
        updates = _updates(client, 10, timeout=30)
        assert [u["data"]["i"] for u in updates] == list(range(index, 30, 3))
        assert [u["seq"] for u in updates] == list(range(1, 11))
    for client in clients.values():
        assert_marker_comes_next(postgres_url, client)  # nothing else: no resync
    after = relay.fresh_health()[1]["listener"]
    assert after["databaseReconnects"] == before["databaseReconnects"] + 1
    # ONE scan over the outbox for every channel, not a query per channel.
    assert after["outbox"]["catchUps"] == before["outbox"]["catchUps"] + 1
    assert after["outbox"]["caughtUp"] == before["outbox"]["caughtUp"] + 30
    for client in clients.values():
        client.close()


def test_after_a_listener_kill_9_what_was_committed_meanwhile_arrives_no_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect("dlkill1")
    channel = "user_Usage_dlkill1"
    notify(postgres_url, channel, '{"i": 0}')
    assert _updates(client, 1)[0]["seq"] == 1
    [old] = relay.listener_pids()
    writer = psycopg2.connect(postgres_url)  # open before the database closes
    writer.autocommit = True
    try:
        # The new listener cannot connect before all 30 are committed: it starts after them,
        # and the workers attach their connections again from where they were.
        with _database_closed(postgres_url), writer.cursor() as cur:
            os.kill(old, signal.SIGKILL)
            for i in range(1, 31):
                cur.execute("SELECT relay_publish(%s, %s::json)", (channel, json.dumps({"i": i})))
            wait_for(lambda: relay.listener_pids() not in ([], [old]), 15)
    finally:
        writer.close()
    updates = _updates(client, 30, timeout=40)
    assert [u["data"]["i"] for u in updates] == list(range(1, 31))
    assert [u["seq"] for u in updates] == list(range(2, 32))
    assert_marker_comes_next(postgres_url, client)
    assert relay.listener_pids() != [old]
    client.close()


# ----- 3. portable cursors -----


def test_a_client_moves_to_another_instance_with_its_cursor(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    first = relay_factory()
    second = relay_factory()
    client = first.connect("dlmove1")
    for i in range(3):
        notify(postgres_url, "user_Subscription_dlmove1", json.dumps({"i": i}))
    cursors = _cursors(client, _updates(client, 3))
    client.close()
    for i in range(3, 8):
        notify(postgres_url, "user_Subscription_dlmove1", json.dumps({"i": i}))
    notify(postgres_url, "user_Usage_dlmove1", '{"u": 1}')
    moved = second.connect("dlmove1", resume=cursors)
    assert moved.connected["resumed"] is True
    replayed = _updates(moved, 6)
    subs = [u for u in replayed if u["channel"] == "user_Subscription_dlmove1"]
    assert [u["data"]["i"] for u in subs] == [3, 4, 5, 6, 7]
    assert [u["seq"] for u in subs] == [4, 5, 6, 7, 8]
    assert [u["data"] for u in replayed if u["channel"] == "user_Usage_dlmove1"] == [{"u": 1}]
    notify(postgres_url, "user_Subscription_dlmove1", '{"i": 8}')
    live = _updates(moved, 1)[0]
    assert live["data"] == {"i": 8} and live["seq"] == 9  # no duplicate, no gap
    assert_marker_comes_next(postgres_url, moved)
    moved.close()


def test_a_cursor_from_before_the_outbox_gets_one_clean_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    notify(postgres_url, "user_Usage_dlold1", '{"n": 1}')
    client = relay.connect("dlold1", resume={"user_Usage_dlold1": "a1b2c3-4:17"})
    assert client.connected["resumed"] is False
    resync = client.recv(10)
    assert resync is not None and resync["type"] == "resync"
    assert resync["channels"] == ["user_Usage_dlold1"]
    assert resync["reason"] == "history unavailable"
    [(epoch,)] = query(postgres_url, "SELECT epoch FROM relay.meta")
    assert resync["cursors"]["user_Usage_dlold1"].startswith(f"{epoch}:1:")
    notify(postgres_url, "user_Usage_dlold1", '{"n": 2}')
    assert _updates(client, 1)[0]["data"] == {"n": 2}
    assert_marker_comes_next(postgres_url, client)  # one resync, nothing else
    client.close()


def test_a_message_the_database_did_not_number_resyncs_its_channel_alone(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Outbox on, a message without a database number (kind n: a read-only transaction here;
    also a commit lock not taken in time, or relay's trigger failing): its channel's clients
    resync to the cursor they have, numbering goes on after it, nobody else hears of it."""
    relay = relay_factory()
    client = relay.connect("dlun1")
    other = relay.connect("dlun2")
    _durable(relay)
    channel = "user_Usage_dlun1"
    notify(postgres_url, channel, '{"n": 1}')
    first = _updates(client, 1)[0]
    execute(postgres_url, "BEGIN READ ONLY; SELECT relay_publish(%s, '{\"n\": \"none\"}'); "
                          "COMMIT", (channel,))
    resync = client.recv(10)
    assert resync is not None and resync["type"] == "resync", resync
    assert resync["reason"] == "unnumbered message" and resync["channels"] == [channel]
    assert resync["cursors"] == {channel: first["cursor"]}
    notify(postgres_url, channel, '{"n": 2}')
    second = _updates(client, 1)[0]
    assert second["data"] == {"n": 2} and second["seq"] == first["seq"] + 1
    assert_marker_comes_next(postgres_url, client, other)  # nothing else, nothing to the other
    client.close()
    other.close()


# ----- 4. what cannot be served -----


def test_past_retention_one_resync_history_expired(relay_factory: Callable[..., RelayProcess],
                                                   postgres_url: str) -> None:
    relay = relay_factory()
    other = relay_factory()  # its cache never saw the channel: it reads the outbox
    client = relay.connect("dlexp1")
    channel = "user_Usage_dlexp1"
    notify(postgres_url, channel, '{"n": 1}')
    cursors = _cursors(client, _updates(client, 1))
    client.close()
    notify(postgres_url, channel, '{"n": 2}')
    # Everything so far is past retention: cleaned up, as relay.cleanup() does every few
    # seconds (made old rather than waiting for it).
    execute(postgres_url, "UPDATE relay.outbox SET created_at = created_at - interval '1 hour'")
    execute(postgres_url, "SELECT relay.cleanup(100000)")
    assert not query(postgres_url, "SELECT 1 FROM relay.outbox WHERE channel = %s", (channel,))
    back = other.connect("dlexp1", resume=cursors)
    assert back.connected["resumed"] is False
    resync = back.recv(10)
    assert resync is not None and resync["type"] == "resync", resync
    assert resync["reason"] == "history expired" and resync["channels"] == [channel]
    notify(postgres_url, channel, '{"n": 3}')
    live = _updates(back, 1)[0]
    assert live["data"] == {"n": 3} and live["seq"] == 3
    assert_marker_comes_next(postgres_url, back)
    back.close()


def test_a_restore_changes_the_epoch_one_resync_and_old_cursors_are_refused(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect("dldiv1")
    channel = "user_Usage_dldiv1"
    notify(postgres_url, channel, '{"n": 1}')
    cursors = _cursors(client, _updates(client, 1))
    [(old_epoch,)] = query(postgres_url, "SELECT epoch FROM relay.meta")
    # What a restore into another database looks like to relay.hello(2): the fingerprint no
    # longer matches. The listener reconnects (as it would to the restored database).
    execute(postgres_url, "UPDATE relay.meta SET database_oid = 1")
    execute(postgres_url, "SELECT pg_terminate_backend(%s)", (_listener_backend(postgres_url),))
    resync = client.recv(20)
    assert resync is not None and resync["type"] == "resync", resync
    [(epoch,)] = query(postgres_url, "SELECT epoch FROM relay.meta")
    assert epoch != old_epoch
    assert resync["channels"] == sorted(client.connected["cursors"]) or set(
        resync["channels"]) == set(client.connected["cursors"])
    assert all(c.startswith(f"{epoch}:") for c in resync["cursors"].values())
    notify(postgres_url, channel, '{"n": 2}')
    live = _updates(client, 1)[0]
    assert live["data"] == {"n": 2} and live["cursor"].startswith(f"{epoch}:")
    assert_marker_comes_next(postgres_url, client)  # one resync only
    back = relay.connect("dldiv1", resume=cursors)  # a cursor of the old history
    assert back.connected["resumed"] is False
    again = back.recv(10)
    assert again is not None and again["type"] == "resync"
    assert again["reason"] == "history unavailable"
    for c in (client, back):
        c.close()


FAST = {"RELAY_DB_CHECK_INTERVAL": "1", "RELAY_DB_CHECK_TIMEOUT": "2",
        "RELAY_RECONNECT_MAX_DELAY": "1"}


def test_after_a_postgresql_restart_what_was_committed_arrives_no_resync(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    url = own_postgres.url
    relay = relay_factory({**FAST, "DATABASE_URL": url})
    client = relay.connect("dlpgr1")
    channel = "user_Usage_dlpgr1"
    notify(url, channel, '{"i": 0}')
    assert _updates(client, 1)[0]["seq"] == 1
    own_postgres.restart()
    # Committed as soon as the database is back, before or while the listener reconnects.
    for i in range(1, 31):
        notify(url, channel, json.dumps({"i": i}))
    updates = _updates(client, 30, timeout=40)
    assert [u["data"]["i"] for u in updates] == list(range(1, 31))
    assert [u["seq"] for u in updates] == list(range(2, 32))
    wait_for(lambda: relay.health()[0] == 200, 20)
    assert_marker_comes_next(url, client)
    client.close()


def test_a_steady_stream_across_a_terminated_backend_has_no_gap_and_no_resync(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    channel = "user_Usage_dlst1"
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    client = relay.connect("dlst1")
    writer, reader = NotifyWriter(own_postgres.url, channel), MessageReader(client)
    with running(writer, reader):
        wait_for(lambda: len(writer.committed) >= 50, 10, message="the writer")
        reconnects = relay.health()[1]["listener"]["databaseReconnects"]
        execute(own_postgres.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'relay-listener'")
        wait_for(lambda: relay.health()[1]["listener"]["databaseReconnects"] > reconnects, 10)
        sent_after = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= sent_after + 50, 10,
                 message="the writer after the reconnect")
    wait_for(lambda: len([m for _, m in reader.received if m["type"] == "update"])
             >= len(writer.committed), 20, message="every committed update")
    received = [m for _, m in reader.received if m["type"] != "connected"]
    assert [m["type"] for m in received] == ["update"] * len(received)  # no resync
    assert [m["seq"] for m in received] == list(range(1, len(writer.committed) + 1))
    assert [m["data"]["n"] for m in received] == sorted(writer.committed)
    client.close()


def _standby_of(primary: EmbeddedPostgres, where: Path) -> EmbeddedPostgres:
    """A streaming replica of ``primary`` (pg_basebackup -R), started."""
    where.mkdir(mode=0o700)
    account = primary._account
    if account is not None:
        os.chown(where, *account)
    primary._run("pg_basebackup", ["-h", "127.0.0.1", "-p", str(primary.port), "-U",
                                   "postgres", "-D", str(where), "-R", "-X", "stream",
                                   "-c", "fast"])
    standby = EmbeddedPostgres(where, port=free_port())
    standby.start()
    return standby


def test_a_replica_is_refused_with_one_log_line_and_health_says_why(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres,
        tmp_path: Path) -> None:
    standby = _standby_of(own_postgres, tmp_path / "standby")
    try:
        relay = relay_factory({**FAST, "DATABASE_URL": standby.url}, wait=False)
        status, body = wait_for(lambda: (h := relay.health())[1].get("reason", "").startswith(
            "database refused") and h, 20, message="health saying the database is refused")
        assert status == 503
        assert "replica" in body["reason"]
        assert body["listener"]["databaseRefused"] and body["listener"]["database"] == \
            "disconnected"
        time.sleep(3)  # a few retries (backoff capped at 1 s): still one log line
        lines = [line for line in relay.logs().splitlines() if "is a replica" in line]
        assert len(lines) == 1, lines
        # Promoted (a failover): the retry finds a primary, with a new timeline: new epoch.
        standby._run("pg_ctl", ["promote", "-D", str(standby.data_dir), "-w"])
        wait_for(lambda: relay.health()[0] == 200, 20, message="200 once promoted")
        assert relay.health()[1]["listener"]["databaseRefused"] is None
        client = relay.connect("dlrep1")
        notify(standby.url, "user_Usage_dlrep1", '{"n": 1}')
        assert _updates(client, 1)[0]["data"] == {"n": 1}
        client.close()
    finally:
        standby.stop("immediate")


def test_connections_arriving_together_all_get_the_databases_cursors(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Attaches arrive while the listener reads the database for earlier ones: each is still
    answered from the durable history (a cursor of the in-memory history would resync on
    the client's next reconnect)."""
    relay = relay_factory()
    [(epoch,)] = query(postgres_url, "SELECT epoch FROM relay.meta")
    for i in range(40):
        notify(postgres_url, f"user_Usage_dlcrowd{i}", '{"n": 1}')  # heads to learn
    clients: list[Client] = []
    lock = threading.Lock()

    def connect(i: int) -> None:
        client = relay.connect(f"dlcrowd{i}")
        with lock:
            clients.append(client)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clients) == 40
    for client in clients:
        for channel, cursor in client.connected["cursors"].items():
            assert cursor.startswith(f"{epoch}:") and len(cursor.split(":")) == 3, (channel,
                                                                                    cursor)
        client.close()
