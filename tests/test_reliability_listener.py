"""Listener faults: a killed listener is replaced, clients resync and keep receiving, and no
worker restart or reload ever leaves two listeners or two database connections."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from tests.support import RelayProcess, database_connections, notify, wait_for


def test_kill_9_listener_clients_resync_and_updates_flow(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    clients = {f"k{i}": relay.connect(f"k{i}") for i in range(4)}
    (old,) = relay.listener_pids()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: relay.listener_pids() and relay.listener_pids() != [old], 5,
             message="a new listener")
    wait_for(lambda: relay.health()[0] == 200 and relay.health()[1]["totalConnections"] == 4,
             5, message="the new listener to serve every connection")
    for user, client in clients.items():
        resync = client.expect("resync")
        assert resync["reason"] == "listener restarted"
        assert set(resync["channels"]) == {f"user_Subscription_{user}", f"user_Usage_{user}"}
        notify(postgres_url, f"user_Usage_{user}", '{"after": "restart"}')
        update = client.expect("update")
        assert update["data"] == {"after": "restart"}
        assert update["cursor"] == f"{resync['cursors'][update['channel']].split(':')[0]}:1"
    assert database_connections(postgres_url) == 1
    assert len(relay.listener_pids()) == 1
    for client in clients.values():
        client.close()


def test_worker_restart_keeps_one_listener_and_one_db_connection(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    bystander = relay.connect("bystander-w")
    listeners = relay.listener_pids()
    workers = relay.worker_pids()
    os.kill(workers[0], signal.SIGTERM)
    wait_for(lambda: workers[0] not in relay.worker_pids() and len(relay.worker_pids()) == 2,
             20, message="gunicorn to replace the worker")
    relay.wait_healthy()
    assert relay.listener_pids() == listeners
    assert database_connections(postgres_url) == 1
    if bystander.close_code is None:
        notify(postgres_url, "user_Usage_bystander-w", "{}")
        message = bystander.recv()
        # The bystander was on the surviving worker (update) or drained (1012), never silent.
        assert (message and message["type"] == "update") or bystander.close_code == 1012
    bystander.close()
