"""One relay instance: one listener, one database connection, health over all workers, and
a listener that never outlives gunicorn."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest

from tests.support import (
    RelayProcess,
    assert_marker_comes_next,
    database_connections,
    execute,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


def _listener_query(database_url: str) -> str:
    import psycopg2

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE application_name = 'relay-listener'")
        rows = cur.fetchall()
    conn.close()
    return rows[0][0] if rows else ""


def test_exactly_one_database_connection_with_200_clients(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    clients = [relay.connect(f"many{i}") for i in range(200)]
    # /health serves the figures the listener pushed within the last second.
    wait_for(lambda: relay.health()[1].get("totalConnections") == 200, 10)
    status, health = relay.health()
    assert status == 200
    assert health["totalConnections"] == 200
    assert health["connectedUsers"] == 200
    assert health["listener"]["channels"] == 400
    assert database_connections(postgres_url) == 1
    # And only one process of the instance talks to PostgreSQL at all.
    assert len(relay.listener_pids()) == 1
    for client in clients:
        client.close()


def test_health_counts_every_worker(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    clients = [relay.connect(f"h{i}") for i in range(6)] + [relay.connect("h0")]
    # Ask until both workers have answered with the instance-wide totals (each serves the
    # figures the listener pushed within the last second).
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        status, body = relay.health()
        assert status == 200
        if body["totalConnections"] == 7:
            seen[body["worker"]["pid"]] = body
    assert len(seen) == 2, "both workers should answer /health"
    local = sum(body["worker"]["connections"] for body in seen.values())
    assert local == 7
    for body in seen.values():
        assert body["totalConnections"] == 7
        assert body["connectedUsers"] == 6
        assert body["status"] == "healthy"
        assert set(body) >= {"status", "timestamp", "uptime", "connectedUsers",
                             "totalConnections"}
        assert body["timestamp"].endswith("Z")
    for client in clients:
        client.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] == 0, 10, message="totals back to 0")


def test_health_is_503_while_the_listener_is_unreachable(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    (listener,) = relay.listener_pids()
    os.kill(listener, signal.SIGSTOP)
    try:
        # The workers serve the listener's pushed figures; once they are older than a few
        # seconds, a listener that stopped reporting makes the instance unhealthy.
        status, body = wait_for(lambda: (r := relay.health())[0] == 503 and r, 15,
                                message="503 from a listener that stopped reporting")
        assert status == 503
        assert body["status"] == "unhealthy"
    finally:
        os.kill(listener, signal.SIGCONT)
    wait_for(lambda: relay.health()[0] == 200, 10, message="healthy again")


def test_unlisten_after_the_last_client_of_a_user_leaves(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    # What is UNLISTENed is a user's own channel: per-user LISTEN.
    relay = relay_factory({"RELAY_LINGER_SECONDS": "0", "RELAY_USER_CHANNELS": "listen"})
    first = relay.connect("leaver")
    second = relay.connect("leaver")
    wait_for(lambda: relay.health()[1]["listener"]["channels"] == 2, 10)
    first.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 10,
             message="the listener to count the detach")
    # One connection of the user is left: still listening (a marker NOTIFYed after the
    # detach reaches it) — with a linger of 0, a wrong UNLISTEN would have followed at once.
    assert_marker_comes_next(postgres_url, second)
    assert relay.health()[1]["listener"]["channels"] == 2
    second.close()
    wait_for(lambda: relay.health()[1]["listener"]["channels"] == 0, 10,
             message="both channels UNLISTENed")
    assert _listener_query(postgres_url).startswith("UNLISTEN")


def test_channels_linger_after_the_last_client(
        relay_factory: Callable[..., RelayProcess]) -> None:
    # /health shows the listener's figures as pushed about once a second: a linger of several
    # seconds is seen lingering by several pushes, even on a loaded machine (with 1 s, a push
    # could fall just before the close and the next one after the linger).
    relay = relay_factory({"RELAY_LINGER_SECONDS": "4"})
    relay.connect("lingerer").close()
    wait_for(lambda: relay.health()[1]["listener"]["lingering"] == 2, 5,
             message="both channels lingering")
    assert relay.health()[1]["listener"]["channels"] == 2
    wait_for(lambda: relay.health()[1]["listener"]["channels"] == 0, 15,
             message="UNLISTEN after the linger")


def test_kill_9_of_the_master_takes_listener_and_db_connection_within_5s(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect("orphan")
    assert database_connections(postgres_url) == 1
    helpers = [psutil.Process(pid) for pid in relay.listener_pids() + relay.supervisor_pids()]
    assert len(helpers) == 2
    assert relay.proc is not None
    relay.proc.kill()
    relay.proc.wait()
    started = time.monotonic()
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in helpers), 5, message="listener and supervisor to exit")
    wait_for(lambda: database_connections(postgres_url) == 0, 5 - (time.monotonic() - started),
             message="the listener's database connection to close")
    client.close()


def test_hup_reload_keeps_one_listener_and_one_db_connection(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    listeners = relay.listener_pids()
    old_workers = set(relay.worker_pids())
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: set(relay.worker_pids()).isdisjoint(old_workers)
             and len(relay.worker_pids()) == 2, 30, message="new workers after HUP")
    relay.wait_healthy()
    assert relay.listener_pids() == listeners
    assert len(relay.supervisor_pids()) == 1
    assert database_connections(postgres_url) == 1
    client = relay.connect("after-hup")
    execute(postgres_url, "SELECT relay_publish('user_Usage_after-hup', '{}')")
    assert client.expect("update")["channel"] == "user_Usage_after-hup"
    client.close()


def test_clean_shutdown_stops_listener_and_supervisor(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    helpers = [psutil.Process(pid) for pid in relay.listener_pids() + relay.supervisor_pids()]
    assert relay.stop() == 0
    for p in helpers:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: database_connections(postgres_url) == 0, 5)
