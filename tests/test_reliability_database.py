"""Database faults: restart, terminated backend, a silent connection, a frozen server. The
listener notices (within 10 s when silent), reconnects with capped jittered backoff,
re-LISTENs and only then tells clients to resync (in-memory history, relay's outbox off;
with it on the listener catches up from the outbox instead: tests/test_durable_listener.py);
/health is 503 meanwhile, 200 after."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import psycopg2
import pytest

from relay.config import Settings
from relay.dev.postgres import EmbeddedPostgres
from relay.listener.database import next_backoff
from tests.streams import MessageReader, NotifyWriter, check_no_silent_gap, running
from tests.support import RelayProcess, database_connections, execute, notify, wait_for

FAST = {"RELAY_DB_CHECK_INTERVAL": "1", "RELAY_DB_CHECK_TIMEOUT": "2",
        "RELAY_RECONNECT_MAX_DELAY": "1"}


def _listener_backend(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'relay-listener'")
        rows = cur.fetchall()
    conn.close()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def _in_memory(url: str) -> str:
    """These tests hold the in-memory history to its rule (a reconnect resyncs everybody):
    relay's outbox off. With it on, a reconnect is caught up from the outbox instead, with no
    resync (tests/test_durable_listener.py)."""
    execute(url, "SELECT relay.set('outbox', 'off')")
    return url


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


@pytest.mark.slow
def test_postgresql_restart(relay_factory: Callable[..., RelayProcess],
                            own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": _in_memory(own_postgres.url)})
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


@pytest.mark.slow
def test_terminated_backend(relay_factory: Callable[..., RelayProcess],
                            own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": _in_memory(own_postgres.url)})
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


@pytest.mark.slow
def test_silent_database_is_detected_by_the_health_query(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": _in_memory(own_postgres.url)})
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


@pytest.mark.slow
def test_updates_across_a_terminated_backend_never_skip_silently(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    """Under a steady stream of notifications: the old stream without gaps, then exactly one
    resync, then the new stream without gaps (no update of the new stream before the
    resync). Whatever is missing was sent before the client saw the resync (that is what
    the resync excuses); everything sent after it arrives; nothing arrives twice."""
    channel = "user_Usage_cw1"
    relay = relay_factory({**FAST, "DATABASE_URL": _in_memory(own_postgres.url)})
    client = relay.connect("cw1")
    bystander = relay.connect("cw-by")
    writer, reader = NotifyWriter(own_postgres.url, channel), MessageReader(client)
    with running(writer, reader):
        wait_for(lambda: len(writer.committed) >= 50, 10, message="the writer")
        _terminate_listener_backend(own_postgres.url)
        wait_for(lambda: any(m["type"] == "resync" for _, m in reader.received), 20,
                 message="the resync")
        sent_after = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= sent_after + 50, 10,
                 message="the writer after the resync")
    assert client.close_code is None and bystander.close_code is None
    counts = check_no_silent_gap(reader.received, channel, writer)
    assert counts["resyncs"] == 1 and counts["delivered"] >= 100
    (resync,) = [m for _, m in reader.received if m["type"] == "resync"]
    assert resync["reason"] == "database reconnected"
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


@pytest.mark.slow
def test_frozen_postgresql_is_503_within_10_s_and_recovers(
        relay_factory: Callable[..., RelayProcess], own_postgres: EmbeddedPostgres) -> None:
    relay = relay_factory({**FAST, "DATABASE_URL": _in_memory(own_postgres.url)})
    clients = {"fz1": relay.connect("fz1")}
    old_epoch = relay.health()[1]["listener"]["epoch"]
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
    clients["fz2"] = late
    connected = late.expect("connected", timeout=15)
    assert connected["userId"] == "fz2"
    # It waited: its `connected` names the epoch of the connection made after the thaw (the
    # frozen one's epoch would mean it was answered while the database was away).
    assert connected["epoch"] != old_epoch
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


@pytest.mark.slow
def test_a_connection_that_dies_right_after_connecting_is_retried_with_backoff(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Connecting succeeds, then the server closes the session at once (a 20 ms
    idle_session_timeout on the listener's connection alone): each such cycle must back off
    further, not start again from 0.1 s (about 10 reconnects a second, 30 in this window)."""
    conn = psycopg2.connect(postgres_url)
    version = conn.server_version
    conn.close()
    if version < 140000:
        pytest.skip("idle_session_timeout needs PostgreSQL 14")
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options=-c%20idle_session_timeout%3D20"
    relay = relay_factory({**FAST, "DATABASE_URL": url}, workers=1, wait=False)

    def reconnects() -> int:
        return int(relay.health()[1].get("listener", {}).get("databaseReconnects", 0))

    wait_for(lambda: reconnects() >= 1, 15, message="the listener's first lost connection")
    time.sleep(2.0)  # the backoff climbs towards its 1 s cap meanwhile
    before = reconnects()
    time.sleep(3.0)
    lost = reconnects() - before
    # Each retry waits at most the cap and at least half of it (jitter): 2 to 7 fit in 3 s.
    # At least 2 also shows that the connection still comes up and dies each time.
    assert 2 <= lost <= 8, lost


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
