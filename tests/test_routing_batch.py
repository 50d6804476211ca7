"""Unit tests of the listener's batch path (``Router.on_notifications``): what arrives
together is routed in one go, kind m frames straight to the outbox's follower, and the order
holds across workers and channels; a hole is still filled from the outbox, once; any other
frame in the middle of a batch is handled in its place. In-process: a real Router, Delivery,
history and WorkerPeers (on a socketpair), the database's answers scripted."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from relay import bus
from relay.config import Settings
from relay.listener.peers import WorkerPeer, WorkerPeers
from relay.listener.refcounts import ChannelRefcounts
from relay.listener.routing import Router

EPOCH = "e0"


class Note(NamedTuple):
    channel: str
    payload: str


def frame(pos: int, channel: str, seq: int, body: str = "") -> Note:
    tag = f"{pos * 7:08x}"
    return Note("relay", f"r1 m {pos} {seq} {tag} {len(channel)} {channel} "
                         f"{body or json.dumps({'pos': pos})}")


class Scripted:
    """The database's answers to what the Router's outbox asks."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, int, int, str]] = []
        self.reads = 0

    def query(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if "relay.read_from" in statement:
            self.reads += 1
            after, limit = params
            return [row for row in self.rows if row[0] > after][:limit]
        return []  # relay.settle(), heads of nothing


@pytest.fixture
def routed() -> Iterator[tuple[Router, list[WorkerPeer], Scripted, list[Any]]]:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://x/y",
                                  "WEBSOCKET_JWT_SECRET": "b" * 40,
                                  "RELAY_USER_CHANNELS": "off"})
    refcounts = ChannelRefcounts(600)
    sockets = [socket.socketpair() for _ in range(2)]
    everyone = WorkerPeers()
    peers = [WorkerPeer(a, n, everyone.routes) for n, (a, _) in enumerate(sockets)]
    everyone.update(peers)
    revoked: list[Any] = []
    router = Router(settings, refcounts, everyone,
                    lambda r: revoked.append((r, [len(p._queue) for p in peers])), lambda: None)
    scripted = Scripted()
    router._outbox._query = scripted.query  # type: ignore[method-assign]
    # Worker 0 holds a and c, worker 1 holds b and c.
    for peer, channels in ((peers[0], ["a", "c"]), (peers[1], ["b", "c"])):
        refcounts.add(channels)
        peer.attach("u", channels)
    router.delivery.follow({"outbox": True, "protocol": 1, "epoch": EPOCH, "headPos": 0,
                            "deletedUpto": 0, "issuedPos": 0}, True, False, False)
    durable = router.delivery.durable
    assert durable is not None
    for channel in ("a", "b", "c"):
        durable.learn(channel, None)
    yield router, peers, scripted, revoked
    for a, b in sockets:
        a.close()
        b.close()


def received(peer: WorkerPeer) -> list[tuple[str, int, Any]]:
    """(channel, seq, data) of each update queued to the worker, in order."""
    out = []
    for kind, body in bus.FrameReader().feed(b"".join(peer._queue)):
        assert kind == bus.UPDATE
        channel, frame = bus.decode_update(body)
        update = json.loads(bus.update_message(frame))
        assert update["channel"] == channel
        assert update["cursor"] == f"{EPOCH}:{update['seq']}:{update['data']['pos'] * 7:08x}"
        out.append((channel, update["seq"], update["data"]["pos"]))
    return out


def test_a_batch_keeps_commit_order_on_every_worker_and_channel(routed: Any) -> None:
    router, peers, scripted, _ = routed
    router.on_notifications([frame(1, "a", 1), frame(2, "c", 1), frame(3, "b", 1),
                             frame(4, "c", 2), frame(5, "a", 2), frame(6, "x", 1)])
    router.on_notifications([frame(7, "b", 2), frame(8, "c", 3)])
    assert received(peers[0]) == [("a", 1, 1), ("c", 1, 2), ("c", 2, 4), ("a", 2, 5),
                                  ("c", 3, 8)]
    assert received(peers[1]) == [("c", 1, 2), ("b", 1, 3), ("c", 2, 4), ("b", 2, 7),
                                  ("c", 3, 8)]
    assert scripted.reads == 0  # consecutive positions: nothing read
    figures = router.delivery.figures()
    assert figures["outboxPosition"] == 8
    assert figures["notificationsDropped"] == {"unsubscribed": 1}  # x: nobody here


def test_a_hole_in_a_batch_is_filled_from_the_outbox_once(routed: Any) -> None:
    router, peers, scripted, _ = routed
    # Position 3 never came as a frame (a failed transaction's number, or a sync frame's
    # messages): the scan reads 3 to 5, and the frames of 4 and 5 that follow in the same
    # batch are the ones it handed on already.
    scripted.rows = [(3, "a", 2, 21, json.dumps({"pos": 3})),
                     (4, "c", 2, 28, json.dumps({"pos": 4})),
                     (5, "a", 3, 35, json.dumps({"pos": 5}))]
    router.on_notifications([frame(1, "a", 1), frame(2, "c", 1), frame(4, "c", 2),
                             frame(5, "a", 3), frame(6, "c", 3)])
    assert received(peers[0]) == [("a", 1, 1), ("c", 1, 2), ("a", 2, 3), ("c", 2, 4),
                                  ("a", 3, 5), ("c", 3, 6)]
    follower = router.delivery.follower
    assert follower is not None
    assert (follower.holes, follower.scans, follower.duplicates) == (1, 1, 1)


def test_a_frame_of_another_kind_is_handled_in_its_place(routed: Any) -> None:
    router, peers, _, revoked = routed
    router.on_notifications([frame(1, "a", 1), Note("relay", "r1 k 0 0 00000000 1 u 12.5"),
                             Note("relay", "not relay's"), frame(2, "a", 2)])
    # The revocation came after the first update was queued and before the second.
    assert revoked == [({"u": 12.5}, [1, 0])]
    assert received(peers[0]) == [("a", 1, 1), ("a", 2, 2)]
    assert router.delivery.figures()["notificationsDropped"] == {"foreign": 1}
