"""Graceful drain: SIGTERM to the master closes every client with 1012, spread over
RELAY_DRAIN_SECONDS (not all in the same instant), and every process exits well before
gunicorn's graceful_timeout."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import psutil

from tests.support import Client, RelayProcess

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
