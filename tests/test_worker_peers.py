"""Unit tests of the listener's routes (``WorkerPeers.routes``): a channel is routed to exactly
the workers that hold it, as their connections attach and detach, and never to a worker that
is gone. In-process: real WorkerPeers on socketpairs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from relay.listener.peers import WorkerPeer, WorkerPeers


@pytest.fixture
def workers() -> Iterator[tuple[WorkerPeers, WorkerPeer, WorkerPeer]]:
    everyone = WorkerPeers()
    pairs = [socket.socketpair() for _ in range(2)]
    one, two = (WorkerPeer(a, n, everyone.routes) for n, (a, _) in enumerate(pairs))
    everyone.update((one, two))
    yield everyone, one, two
    for a, b in pairs:
        a.close()
        b.close()


def test_a_channel_is_routed_to_the_workers_that_hold_it_until_their_last_connection_leaves(
        workers: tuple[WorkerPeers, WorkerPeer, WorkerPeer]) -> None:
    everyone, one, two = workers
    one.attach("u1", ["a", "c"])
    one.attach("u2", ["c"])  # a second connection holding c on the same worker
    two.attach("u3", ["b", "c"])
    assert everyone.routes == {"a": one, "c": (one, two), "b": two}
    assert one.detach("u1", ["a", "c"]) == ["a", "c"]
    assert everyone.routes == {"c": (one, two), "b": two}  # u2 still holds c on one
    assert one.detach("u2", ["c"]) == ["c"]
    assert everyone.routes == {"c": two, "b": two}
    assert one.detach("u2", ["c"]) is None  # nothing held: nothing changes
    two.detach("u3", ["b", "c"])
    assert everyone.routes == {}


def test_a_closed_worker_is_routed_nothing_even_by_a_late_attach(
        workers: tuple[WorkerPeers, WorkerPeer, WorkerPeer]) -> None:
    everyone, one, two = workers
    one.attach("u1", ["a", "c"])
    two.attach("u2", ["c"])
    one.close()
    assert everyone.routes == {"c": two}
    one.attach("u3", ["d"])  # read from its socket before the close was noticed
    assert "d" not in everyone.routes
    assert one.channels["a"] == 1  # what it held is still counted, for the listener's release
