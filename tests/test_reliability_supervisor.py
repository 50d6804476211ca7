"""Supervisor faults: gunicorn reaps a dead supervisor without a word (trap 7), so the master
watches it from its main loop. A kill -9'd supervisor is replaced within seconds, with a
new listener: clients resync (in-memory history: relay's outbox off for these tests; with it
on they resume, tests/test_durable_listener.py) and keep receiving, one database connection,
/health 200 —
also after a HUP, which starts no second supervisor. A stopping master restarts nothing,
and a supervisor that keeps dying is restarted with a growing delay, never in a loop."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest

from relay.supervisor import SupervisorProcess
from tests.support import RelayProcess, database_connections, notify, wait_for


def _restart_lines(relay: RelayProcess) -> list[str]:
    lines = []
    for text in relay.logs().splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("logger") == "relay.supervisor"
                and record.get("level") == "error" and "restarted it" in record["msg"]):
            lines.append(record["msg"])
    return lines


def _recovered(relay: RelayProcess, old_supervisor: int, epoch: str,
               connections: int = 0) -> bool:
    status, body = relay.health()
    return (status == 200 and body["listener"]["epoch"] != epoch
            and body["totalConnections"] == connections
            and len(relay.supervisor_pids()) == 1 and relay.supervisor_pids() != [old_supervisor]
            and len(relay.listener_pids()) == 1)


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _helpers_of(master: int) -> list[psutil.Process]:
    """Every supervisor started by ``master`` and every listener under one, wherever they
    were reparented to."""
    supervisors, listeners = [], []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "relay supervise" in cmdline and f"--parent-pid {master}" in cmdline:
            supervisors.append(p)
        elif "relay listen" in cmdline:
            listeners.append(p)
    ids = {p.pid for p in supervisors}
    return supervisors + [p for p in listeners
                          if any(f"--parent-pid {pid}" in " ".join(p.info["cmdline"])
                                 for pid in ids)]


@pytest.mark.slow
def test_kill_9_of_the_supervisor_brings_a_new_one_and_a_new_listener_clients_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    relay = relay_factory()
    clients = {user: relay.connect(user) for user in ("sv1", "sv2", "sv3")}
    workers = sorted(relay.worker_pids())
    (supervisor,), (listener,) = relay.supervisor_pids(), relay.listener_pids()
    epoch = relay.health()[1]["listener"]["epoch"]
    os.kill(supervisor, signal.SIGKILL)

    wait_for(lambda: _recovered(relay, supervisor, epoch, len(clients)), 15, 0.1,
             "a new supervisor and listener serving every connection")
    assert relay.listener_pids() != [listener]
    wait_for(lambda: _gone([listener]), 5, message="the old listener to exit")  # PDEATHSIG
    assert database_connections(postgres_url) == 1
    for user, client in clients.items():
        resync = client.expect("resync")
        assert resync["reason"] == "listener restarted"
        notify(postgres_url, f"user_Usage_{user}", '{"after": "supervisor"}')
        assert client.expect("update")["data"] == {"after": "supervisor"}
    assert all(c.close_code is None for c in clients.values()), "a client was disconnected"
    assert sorted(relay.worker_pids()) == workers, "a worker restarted"
    (line,) = _restart_lines(relay)
    assert f"(pid {supervisor}) was killed by SIGKILL" in line
    assert f"restarted it (pid {relay.supervisor_pids()[0]})" in line
    for client in clients.values():
        client.close()


@pytest.mark.slow
def test_after_a_hup_a_killed_supervisor_is_still_replaced_by_exactly_one(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    relay = relay_factory()
    assert relay.proc is not None
    (supervisor,) = relay.supervisor_pids()
    old_workers = set(relay.worker_pids())
    relay.proc.send_signal(signal.SIGHUP)  # re-executes the config, not on_starting
    wait_for(lambda: len(relay.worker_pids()) == 2
             and not old_workers & set(relay.worker_pids()), 20,
             message="the reload to replace every worker")
    relay.wait_healthy()
    assert relay.supervisor_pids() == [supervisor]
    epoch = relay.health()[1]["listener"]["epoch"]

    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: _recovered(relay, supervisor, epoch), 15, 0.1,
             "a new supervisor and listener")
    time.sleep(2)  # a few more passes of the master's loop: still exactly one of each
    assert len(relay.supervisor_pids()) == 1 and len(relay.listener_pids()) == 1
    assert len(_restart_lines(relay)) == 1
    assert database_connections(postgres_url) == 1
    client = relay.connect("after-hup-kill")
    notify(postgres_url, "user_Usage_after-hup-kill", '{"n": 1}')
    assert client.expect("update")["data"] == {"n": 1}
    client.close()


@pytest.mark.slow
def test_term_leaves_no_supervisor_or_listener_even_one_killed_during_the_stop(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    relay = relay_factory()
    assert relay.proc is not None
    master = relay.proc.pid
    (first,) = relay.supervisor_pids()
    epoch = relay.health()[1]["listener"]["epoch"]
    os.kill(first, signal.SIGKILL)  # a restarted supervisor must stop with the master too
    wait_for(lambda: _recovered(relay, first, epoch), 15, 0.1, "a new supervisor")
    (second,) = relay.supervisor_pids()
    # A client that never answers the close keeps its worker draining for a few seconds.
    client = relay.connect("stopping")

    relay.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the master is in its stop(), waiting for the workers
    assert relay.proc.poll() is None
    os.kill(second, signal.SIGKILL)
    assert relay.proc.wait(30) == 0
    wait_for(lambda: not _helpers_of(master), 5,
             message="no supervisor or listener of this master left")
    assert len(_restart_lines(relay)) == 1, "a supervisor was restarted while stopping"
    wait_for(lambda: database_connections(postgres_url) == 0, 5,
             message="the listener's database connection to close")
    client.close()


class _DeadAtOnce:
    """A supervisor that exits with code 1 as soon as it is started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int:
        return 1


def test_a_supervisor_that_keeps_dying_is_restarted_with_a_growing_delay() -> None:
    now = [0.0]
    started: list[float] = []

    def spawn(instance_started_at: float) -> _DeadAtOnce:
        started.append(now[0])
        return _DeadAtOnce(len(started))

    supervisor = SupervisorProcess(spawn=spawn, clock=lambda: now[0])  # type: ignore[arg-type]
    supervisor.start()
    while now[0] < 120:  # two minutes of the master's loop, ten passes a second
        supervisor.check()
        now[0] += 0.1
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) >= 1.0 - 1e-9  # never more than one a second
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))  # growing
    assert max(gaps) <= SupervisorProcess.MAX_DELAY + 0.2
    assert len(started) < 12

    supervisor.stop()  # on_exit (or gunicorn's stop()): nothing is started any more
    count = len(started)
    for _ in range(600):
        supervisor.check()
        now[0] += 0.1
    assert len(started) == count


def test_a_supervisor_that_ran_for_a_while_is_restarted_at_once() -> None:
    now = [0.0]
    started: list[float] = []
    alive = [True]

    class Child:
        pid = 7

        def poll(self) -> int | None:
            return None if alive[0] else -9

    def spawn(instance_started_at: float) -> Child:
        started.append(now[0])
        alive[0] = True
        return Child()

    supervisor = SupervisorProcess(spawn=spawn, clock=lambda: now[0])  # type: ignore[arg-type]
    supervisor.start()
    for death in (60.0, 200.0):
        now[0] = death
        alive[0] = False
        supervisor.check()
        assert started[-1] == death
    assert supervisor.restarts == 2
