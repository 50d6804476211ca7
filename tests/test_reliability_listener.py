"""Listener faults: a killed listener is replaced by its supervisor, clients resume (outbox on) or
resync (outbox off) and keep receiving (none disconnected, no worker restarted), and no
worker restart or gunicorn reload (HUP) ever leaves two listeners or two database
connections."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import websocket

from tests.support import (
    Client,
    RelayProcess,
    assert_marker_comes_next,
    database_connections,
    execute,
    notify,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


def _connect_to_a_serving_worker(relay: RelayProcess, user: str) -> Client:
    """A worker that is stopping answers 1012 at once: a client then simply retries."""
    def connected() -> Client | None:
        candidate = relay.connect(user, expect_connected=False)
        message = candidate.recv()
        if message is not None and message["type"] == "connected":
            return candidate
        assert candidate.close_code == 1012, candidate.close_code
        return None
    return wait_for(connected, 15, 0.2, "a connection to a serving worker")


@pytest.mark.parametrize("outbox", ["on", "off"])
def test_kill_9_listener_clients_resume_or_resync_and_updates_flow(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox: str) -> None:
    """The new listener takes every connection back: with the outbox on they resume where
    they were (nothing to resync: the history is the database's); with it off the history
    died with the listener and each client is told to resync."""
    execute(postgres_url, "SELECT relay.set('outbox', %s)", (outbox,))
    try:
        _kill_9_listener(relay_factory, postgres_url, outbox == "on")
    finally:
        execute(postgres_url, "SELECT relay.set('outbox', 'on')")


def _kill_9_listener(relay_factory: Callable[..., RelayProcess], postgres_url: str,
                     durable: bool) -> None:
    relay = relay_factory()
    clients = {f"k{i}": relay.connect(f"k{i}") for i in range(4)}
    workers = sorted(relay.worker_pids())
    (old,) = relay.listener_pids()
    os.kill(old, signal.SIGKILL)

    def serving() -> bool:
        if relay.listener_pids() in ([], [old]):
            return False
        status, body = relay.health()
        return status == 200 and body["totalConnections"] == 4
    wait_for(serving, 10, message="a new listener serving every connection")
    # The supervisor's own account: it saw the kill and started a new listener. How long
    # that one takes to serve is CPU-bound (1-2 s on an idle 2-core machine, more under
    # load): a figure for a benchmark, not a bound for a test.
    logs = relay.logs()
    died = logs.index(f"listener (pid {old}) exited with -9")
    assert "listener started (pid" in logs[died:], "the supervisor did not start a new one"
    assert len(relay.listener_pids()) == 1 and relay.listener_pids() != [old]
    for user, client in clients.items():
        notify(postgres_url, f"user_Usage_{user}", '{"after": "restart"}')
        if durable:
            update = client.expect("update")  # no resync before it
            assert update["data"] == {"after": "restart"} and update["seq"] == 1
            continue
        resync = client.expect("resync")
        assert resync["reason"] == "listener restarted"
        assert set(resync["channels"]) == {f"user_Subscription_{user}", f"user_Usage_{user}"}
        update = client.expect("update")
        assert update["data"] == {"after": "restart"}
        assert update["cursor"] == f"{resync['cursors'][update['channel']].split(':')[0]}:1"
    if durable:
        assert_marker_comes_next(postgres_url, *clients.values())
    assert all(c.close_code is None for c in clients.values()), "a client was disconnected"
    assert sorted(relay.worker_pids()) == workers, "a worker restarted"
    assert database_connections(postgres_url) == 1
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
    fresh = relay.connect("after-w")
    notify(postgres_url, "user_Usage_after-w", '{"n": 1}')
    assert fresh.expect("update")["data"] == {"n": 1}
    fresh.close()


def test_hup_reload_keeps_one_listener_and_one_db_connection(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    assert relay.proc is not None
    listeners, supervisors = relay.listener_pids(), relay.supervisor_pids()
    old_workers = set(relay.worker_pids())
    # Quick successive reloads: a generation is told to stop while its workers still boot
    # (that once made a worker exit with WORKER_BOOT_ERROR and gunicorn halt the server).
    for _ in range(3):
        relay.proc.send_signal(signal.SIGHUP)
        time.sleep(0.25)
    wait_for(lambda: len(relay.worker_pids()) == 2
             and not old_workers & set(relay.worker_pids()), 20,
             message="the reload to replace every worker")
    relay.wait_healthy()
    assert relay.listener_pids() == listeners
    assert relay.supervisor_pids() == supervisors
    assert database_connections(postgres_url) == 1
    client = _connect_to_a_serving_worker(relay, "after-hup")
    notify(postgres_url, "user_Usage_after-hup", '{"n": 1}')
    assert client.expect("update")["data"] == {"n": 1}
    assert database_connections(postgres_url) == 1
    client.close()


def test_worker_stopped_while_booting_does_not_halt_the_server(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    assert relay.proc is not None
    bystander = relay.connect("boot-by")
    listeners = relay.listener_pids()
    for delay in (0.05, 0.15, 0.3):  # somewhere inside the app's import
        workers = set(relay.worker_pids())
        victim = max(workers)  # the newest worker: not necessarily the bystander's
        os.kill(victim, signal.SIGKILL)
        fresh = wait_for(lambda w=workers: set(relay.worker_pids()) - w, 10, 0.005,
                         "gunicorn to spawn a replacement")
        time.sleep(delay)
        os.kill(next(iter(fresh)), signal.SIGTERM)  # still booting
        time.sleep(0.5)
        assert relay.proc.poll() is None, f"gunicorn halted:\n{relay.logs()[-3000:]}"
    wait_for(lambda: len(relay.worker_pids()) == 2, 20, message="two workers again")
    relay.wait_healthy()
    assert relay.proc.poll() is None
    assert relay.listener_pids() == listeners
    assert database_connections(postgres_url) == 1
    client = _connect_to_a_serving_worker(relay, "after-boot")
    notify(postgres_url, "user_Usage_after-boot", '{"n": 1}')
    assert client.expect("update")["data"] == {"n": 1}
    # The bystander's worker either survived (it still receives) or was the one killed -9.
    notify(postgres_url, "user_Usage_boot-by", '{"n": 2}')
    try:
        message = bystander.recv()
        assert message is None or message["data"] == {"n": 2}
    except (websocket.WebSocketException, OSError):
        pass
    for c in (client, bystander):
        c.close()
