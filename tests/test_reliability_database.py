"""Database faults: restart, terminated backend, a silent connection, a frozen server. The
listener notices (within 10 s when silent), reconnects with capped jittered backoff,
re-LISTENs and only then tells clients to resync; /health is 503 meanwhile, 200 after."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import psycopg2
import pytest
import websocket

from relay.config import Settings
from relay.devdb import EmbeddedPostgres
from relay.listener import next_backoff
from tests.support import Client, RelayProcess, database_connections, notify, wait_for

FAST = {"RELAY_DB_CHECK_INTERVAL": "1", "RELAY_DB_CHECK_TIMEOUT": "2",
        "RELAY_RECONNECT_MAX_DELAY": "1"}


def _listener_backend(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'relay-listener'")
        rows = cur.fetchall()
    conn.close()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def _recovers(relay: RelayProcess, url: str, users: list[str], clients: dict) -> None:
    for user in users:
        resync = clients[user].expect("resync", timeout=30)
        assert resync["reason"] == "database reconnected"
        # re-LISTEN happened before the resync: an update sent now is delivered.
        notify(url, f"user_Subscription_{user}", '{"back": true}')
        assert clients[user].expect("update")["data"] == {"back": True}
    assert relay.health()[0] == 200
    # The old backend may take a moment to notice its client is gone.
    wait_for(lambda: database_connections(url) == 1, 10, message="one database connection")


def test_postgresql_restart(relay_factory: Callable[..., RelayProcess],
                            own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    users = ["r1", "r2"]
    clients = {u: relay.connect(u) for u in users}
    own_postgres.stop("fast")
    wait_for(lambda: relay.health()[0] == 503, 15, message="503 while the database is down")
    assert relay.health()[1]["listener"]["database"] == "disconnected"
    own_postgres.start()
    wait_for(lambda: relay.health()[0] == 200, 30, message="200 after the database is back")
    _recovers(relay, own_postgres.url, users, clients)
    for client in clients.values():
        client.close()


def test_terminated_backend(relay_factory: Callable[..., RelayProcess],
                            own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    clients = {"t1": relay.connect("t1")}
    backend = _listener_backend(own_postgres.url)
    conn = psycopg2.connect(own_postgres.url)
    conn.autocommit = True
    conn.cursor().execute("SELECT pg_terminate_backend(%s)", (backend,))
    conn.close()
    _recovers(relay, own_postgres.url, ["t1"], clients)
    assert _listener_backend(own_postgres.url) != backend
    assert relay.health()[1]["listener"]["databaseReconnects"] >= 1
    clients["t1"].close()


def test_silent_database_is_detected_by_the_health_query(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    clients = {"s1": relay.connect("s1")}
    backend = _listener_backend(own_postgres.url)
    # The backend stops answering but its socket stays open: nothing wakes select().
    os.kill(backend, signal.SIGSTOP)
    try:
        # The listener gives up on the silent backend and connects afresh (the postmaster
        # itself still answers, so the new connection comes up at once).
        wait_for(lambda: relay.health()[1]["listener"]["databaseReconnects"] >= 1, 10,
                 message="the silent connection to be declared dead within 10 s")
    finally:
        os.kill(backend, signal.SIGCONT)
    wait_for(lambda: relay.health()[0] == 200, 30, message="reconnected")
    _recovers(relay, own_postgres.url, ["s1"], clients)
    clients["s1"].close()


def _terminate_listener_backend(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'relay-listener'")
    conn.close()


class _Writer(threading.Thread):
    """Notifies ``n`` = 1, 2, … on one channel every few ms, noting when each began."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.url, self.channel = url, channel
        self.began: dict[int, float] = {}  # n → wall time before its statement was sent
        self.committed: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        n = 0
        while not self.stop.is_set():
            n += 1
            self.began[n] = time.time()
            conn.cursor().execute("SELECT pg_notify(%s, %s)",
                                  (self.channel, json.dumps({"n": n})))
            self.committed.add(n)
            time.sleep(0.005)
        conn.close()


class _Reader(threading.Thread):
    """Reads one client's messages as they come, noting when each arrived."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        quiet_since = time.monotonic()
        while True:
            try:
                message = self.client.recv(timeout=0.25)
            except websocket.WebSocketTimeoutException:
                if self.stop.is_set() and time.monotonic() - quiet_since > 1.0:
                    return
                continue
            if message is None:
                return
            quiet_since = time.monotonic()
            self.received.append((time.time(), message))


@contextmanager
def _running(*threads: _Writer | _Reader) -> Iterator[None]:
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop.set()
        for thread in threads:
            thread.join(20)


def _stream_of(message: dict[str, Any], channel: str) -> str:
    cursor = message["cursor"] if message["type"] == "update" else message["cursors"][channel]
    return cursor.rpartition(":")[0]


def test_updates_across_a_terminated_backend_never_skip_silently(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    """Under a steady stream of notifications: the old stream without gaps, then exactly one
    resync, then the new stream from seq 1 without gaps (no update of the new stream before
    the resync). Whatever is missing was sent before the client saw the resync (that is what
    the resync excuses); everything sent after it arrives; nothing arrives twice."""
    channel = "user_Usage_cw1"
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    client = relay.connect("cw1")
    bystander = relay.connect("cw-by")
    writer, reader = _Writer(own_postgres.url, channel), _Reader(client)
    with _running(writer, reader):
        wait_for(lambda: len(writer.committed) >= 50, 10, message="the writer")
        _terminate_listener_backend(own_postgres.url)
        wait_for(lambda: any(m["type"] == "resync" for _, m in reader.received), 20,
                 message="the resync")
        sent_after = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= sent_after + 50, 10,
                 message="the writer after the resync")
    assert client.close_code is None and bystander.close_code is None
    kinds = [m["type"] for _, m in reader.received]
    assert kinds.count("resync") == 1 and set(kinds) == {"update", "resync"}
    at = kinds.index("resync")
    seen_at, resync = reader.received[at]
    assert resync["reason"] == "database reconnected" and channel in resync["channels"]
    before = [m for _, m in reader.received[:at]]
    after = [m for _, m in reader.received[at + 1:]]
    old = client.connected["cursors"][channel].rpartition(":")[0]
    new = _stream_of(resync, channel)
    assert new != old
    assert {_stream_of(m, channel) for m in before} == {old}
    assert {_stream_of(m, channel) for m in after} == {new}
    assert [m["seq"] for m in before] == list(range(1, len(before) + 1))
    first_after = int(resync["cursors"][channel].rpartition(":")[2]) + 1
    assert [m["seq"] for m in after] == list(range(first_after, first_after + len(after)))
    numbers = [m["data"]["n"] for m in before + after]
    assert numbers == sorted(set(numbers)), "out of order or duplicated"
    missing = writer.committed - set(numbers)
    assert all(writer.began[n] < seen_at for n in missing), "lost after the resync"
    assert {n for n in writer.committed if writer.began[n] >= seen_at} <= set(numbers)
    assert len(after) >= 50
    bystander.expect("resync")  # every client is told, and stays connected
    notify(own_postgres.url, "user_Usage_cw-by", '{"by": 1}')
    assert bystander.expect("update")["data"] == {"by": 1}
    for c in (client, bystander):
        c.close()


@contextmanager
def _frozen(server: EmbeddedPostgres) -> Iterator[None]:
    """Every PostgreSQL process stopped: sockets stay open, nothing answers (a dead network
    as the relay sees it, short of a firewall)."""
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    processes = [postmaster, *postmaster.children()]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            try:
                process.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass


def test_frozen_postgresql_is_503_within_10_s_and_recovers(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": own_postgres.url})
    clients = {"fz1": relay.connect("fz1")}
    with _frozen(own_postgres):
        frozen_at = time.monotonic()
        wait_for(lambda: relay.health()[0] == 503, 10,
                 message="503 within 10 s of the database going silent")
        detected = time.monotonic() - frozen_at
        assert relay.health()[1]["listener"]["database"] == "disconnected"
        time.sleep(1.0)  # reconnect attempts time out against the frozen server meanwhile
        assert relay.health()[0] == 503
        # A client arriving now waits for the database rather than being told "connected".
        late = relay.connect("fz2", expect_connected=False)
        assert late.nothing_within(0.5)
    clients["fz2"] = late
    assert late.expect("connected", timeout=15)["userId"] == "fz2"
    wait_for(lambda: relay.health()[0] == 200, 30, message="200 after the database is back")
    _recovers(relay, own_postgres.url, ["fz1"], clients)
    notify(own_postgres.url, "user_Usage_fz2", '{"late": 1}')
    message = late.recv()
    if message is not None and message["type"] == "resync":  # it may be told as well
        message = late.recv()
    assert message is not None and message["data"] == {"late": 1}
    assert detected < 10
    for client in clients.values():
        client.close()


def test_default_settings_detect_a_silent_database_within_10_seconds() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://db/x",
                                  "WEBSOCKET_JWT_SECRET": "k" * 32})
    # Worst case: it goes silent just after a check; the next one starts an interval later
    # and gives up after its timeout.
    assert settings.db_check_interval + settings.db_check_timeout < 10


@pytest.mark.parametrize("cap", [0.5, 2.0, 10.0])
def test_reconnect_backoff_grows_jittered_up_to_its_cap(cap: float) -> None:
    delays = []
    delay = 0.0
    for _ in range(40):
        delay = next_backoff(delay, cap)
        delays.append(delay)
    assert all(0.05 <= d <= cap for d in delays)
    assert delays[0] <= 0.1
    assert min(delays[-10:]) >= cap / 2  # it reaches the cap and stays in its upper half
    assert len(set(delays)) == len(delays)  # jittered: no two alike
