"""Database faults: restart, terminated backend, a silent connection. The listener notices,
reconnects, re-LISTENs and only then tells clients to resync; /health is 503 meanwhile."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import psycopg2

from relay.devdb import EmbeddedPostgres
from tests.support import RelayProcess, database_connections, notify, wait_for

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
    assert database_connections(url) == 1


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
