"""Graceful drain: SIGTERM to the master closes every client with 1012, spread over
RELAY_DRAIN_SECONDS (not all in the same instant), and every process exits well before
gunicorn's graceful_timeout."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests.support import Client, RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

DRAIN_SECONDS = 2
GRACEFUL_TIMEOUT = DRAIN_SECONDS + 10  # gunicorn.conf.py: int(drain_seconds) + 10


def _watch(client: Client, started: float, arrivals: dict[int, tuple[int, float]],
           index: int) -> None:
    """Read until the close frame and note when it arrived (each client in its own thread,
    so that one slow read never delays the timestamp of another)."""
    code, _ = client.expect_close(timeout=20)
    arrivals[index] = (code, time.monotonic() - started)


def test_sigterm_drains_clients_with_1012_spread_over_the_window(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_DRAIN_SECONDS": str(DRAIN_SECONDS)})
    clients = [relay.connect(f"drain{i}") for i in range(8)]
    assert relay.proc is not None
    children = relay.tree()  # workers, supervisor, listener
    workers = relay.worker_pids()
    arrivals: dict[int, tuple[int, float]] = {}
    started = time.monotonic()
    threads = [threading.Thread(target=_watch, args=(c, started, arrivals, i), daemon=True)
               for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    relay.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(25)
    relay.proc.wait(30)
    exited = time.monotonic() - started
    assert sorted(code for code, _ in arrivals.values()) == [1012] * len(clients), arrivals
    times = sorted(at for _, at in arrivals.values())
    # Spread over the window, loosely: 4 clients per worker are due at 0, 0.5, 1.0, 1.5 s.
    assert times[-1] - times[0] > 0.5, times
    assert times[-1] < DRAIN_SECONDS + 5, times
    assert relay.proc.returncode == 0
    assert exited < GRACEFUL_TIMEOUT, f"exit after {exited:.1f}s"
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, alive
    # A drained worker ends with os._exit (worker/process.exit_now): its last lines are
    # flushed first, and its status is 0 (gunicorn logs any other).
    logs = relay.logs()
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in logs, pid
    assert "exited with code" not in logs


def test_connections_accepted_during_the_drain_do_not_hold_the_worker(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """gunicorn keeps accepting for up to a second after SIGTERM: those late connections
    get 1012 too, and the worker still exits long before graceful_timeout."""
    relay = relay_factory({"RELAY_DRAIN_SECONDS": "1"}, workers=1)
    first = relay.connect("early")
    (worker,) = relay.worker_pids()
    process = psutil.Process(worker)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    late = []
    while process.is_running() and time.monotonic() - started < 0.8:
        try:
            late.append(relay.connect("late", expect_connected=False, timeout=5))
        except OSError:
            break
        time.sleep(0.05)
    assert first.expect_close(timeout=10)[0] == 1012
    process.wait(GRACEFUL_TIMEOUT)
    assert time.monotonic() - started < 1 + 6, "a late connection held the draining worker"
    for client in late:
        message = client.recv()
        # Either refused by the draining worker, or served by its replacement.
        assert client.close_code == 1012 or (message and message["type"] == "connected")
        client.close()
    relay.wait_healthy()
    bystander = relay.connect("after-drain")
    notify(postgres_url, "user_Usage_after-drain", '{"n": 1}')
    assert bystander.expect("update")["data"] == {"n": 1}
    bystander.close()


def test_the_worker_exits_when_the_drain_ends_whatever_its_pool_still_holds(
        relay_factory: Callable[..., RelayProcess]) -> None:
    """A request still arriving (held by the handshake timeout) and a client that never
    answers its close would each hold the worker until graceful_timeout: gunicorn waits for
    its pool, and relay waited for its connections. The worker exits once the drain (and its
    3 s for close handshakes) is over."""
    relay = relay_factory({"RELAY_DRAIN_SECONDS": "1", "RELAY_HANDSHAKE_TIMEOUT": "60"},
                          workers=1)
    deaf = relay.connect("deaf")  # never reads again: its close handshake never completes
    arriving = socket.create_connection(("127.0.0.1", relay.port))  # sends nothing
    try:
        (worker,) = relay.worker_pids()
        process = psutil.Process(worker)
        wait_for(lambda: relay.health()[1].get("worker", {}).get("connections") == 1, 10,
                 message="the deaf client to be counted")
        started = time.monotonic()
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        process.wait(GRACEFUL_TIMEOUT + 5)
        exited = time.monotonic() - started
        # drain 1 s + close handshakes 3 s + gunicorn's 1 s polls; graceful_timeout is 11 s
        assert exited < GRACEFUL_TIMEOUT - 3, f"worker exited after {exited:.1f}s"
        assert "connections never answered their close" in relay.logs()
    finally:
        arriving.close()
        deaf.ws.close()
