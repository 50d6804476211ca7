"""The wire between workers and listener is versioned (``relay.bus.VERSION``, said in each
worker's HELLO): a HUP reloads the workers' code but not the listener's, so after an upgrade
in place the two can differ. A newer worker makes the listener exit for the supervisor to
start the new code; an older one is refused. Real listener, real relay, real Unix socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay import bus
from relay.listener.workers import EXIT_OUTDATED
from tests.listener_peer import ListenerProcess
from tests.support import RelayProcess, execute, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


def _hello(path: str, version: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    hello = {"pid": os.getpid()} if version is None else {"pid": os.getpid(), "bus": version}
    sock.sendall(bus.encode(bus.HELLO, hello))
    return sock


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the listener closes ``sock`` within ``timeout`` (its stats pushes, once a
    second, may come first)."""
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


@pytest.mark.parametrize("version", [None, bus.VERSION - 1])
def test_a_worker_of_an_older_wire_is_refused_and_the_others_go_on(
        postgres_url: str, schema_installed: list[str], tmp_path: Path,
        version: int | None) -> None:
    listener = ListenerProcess(postgres_url, tmp_path).start()
    try:
        current = listener.worker()
        old = _hello(listener.socket_path, version)
        assert _closed_by_peer(old)
        assert any("wire version" in event.get("msg", "") for event in listener.log_events())
        # The listener and a worker of its own release are untouched.
        current.send(current.attach_frame("wire-ok", ["user_Usage_wire-ok"]))
        assert current.answers(1)[0]["ok"] is True
        execute(postgres_url, "SELECT relay_publish('user_Usage_wire-ok', '{\"n\": 1}')")
        assert current.update()[1]["data"] == {"n": 1}
        assert listener.proc is not None and listener.proc.poll() is None
    finally:
        listener.stop()


def test_a_worker_of_a_newer_wire_makes_the_listener_restart_with_the_new_code(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    (before,) = relay.listener_pids()
    client = relay.connect("wire-new")
    newer = _hello(relay.socket_path, bus.VERSION + 1)  # what a HUP after an upgrade starts
    try:
        wait_for(lambda: relay.listener_pids() not in ([], [before]), 20,
                 message="a new listener")
    finally:
        newer.close()
    assert f"exited with {EXIT_OUTDATED} after" in relay.logs()
    assert "relay's code was upgraded under it" in relay.logs()
    # The instance serves on: its workers attach their clients to the new listener.
    wait_for(lambda: relay.health()[0] == 200, 20, message="healthy again")
    execute(postgres_url, "SELECT relay_publish('user_Usage_wire-new', '{\"n\": 2}')")
    update = client.expect("update", timeout=20)  # resumed from the outbox: no resync
    assert update["data"] == {"n": 2}
    client.close()
