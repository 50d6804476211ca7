"""How the listener answers attaches with the durable history (relay.listener.subscriptions):
a storm's resumes gathered into one database round trip, nothing opened in the in-memory
history it does not read. In process: the real Subscriptions, ChannelRefcounts, History and
DurableHistory; the database's answers (heads, reads) and the peer are stand-ins that record
what was asked."""

from __future__ import annotations

from typing import Any

import gevent

from relay import bus
from relay.config import Settings
from relay.listener.durable import DurableHistory, format_cursor
from relay.listener.history import History
from relay.listener.outbox import Head
from relay.listener.refcounts import ChannelRefcounts
from relay.listener.subscriptions import Subscriptions

EPOCH = "e1"


class Delivery:
    """The part of relay.listener.delivery.Delivery that Subscriptions uses; ``learn`` asks
    the stand-in database for heads, as Delivery.learn asks relay.heads."""

    def __init__(self) -> None:
        self.history = History("mem", 100, 300.0, 1 << 20)
        self.durable = DurableHistory(EPOCH, 100, 300.0, 1 << 20)
        self.heads_asked: list[list[str]] = []

    def learn(self, channels: list[str]) -> None:
        if channels:
            self.heads_asked.append(list(channels))
        for channel in channels:
            self.durable.learn(channel, Head(seq=1, tag=7, pos=10))

    def answered(self) -> None:
        pass


class Outbox:
    def __init__(self) -> None:
        self.reads: list[list[tuple[str, int, int]]] = []

    def read_channels(self, wanted: list[tuple[str, int, int]]) -> list[list[Any]]:
        self.reads.append(list(wanted))
        return [[] for _ in wanted]


class Link:
    connected = True
    listening: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class Peer:
    closed = False

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []

    def send(self, frame: bytes) -> None:
        reader = bus.FrameReader()
        self.answers.extend(bus.decode_json(body) for _, body in reader.feed(frame))


def _subscriptions() -> tuple[Subscriptions, Delivery, Outbox, Link]:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u@127.0.0.1:1/db",
                                  "WEBSOCKET_JWT_SECRET": "s" * 32})
    delivery, outbox, link = Delivery(), Outbox(), Link()
    subs = Subscriptions(settings, ChannelRefcounts(5.0), delivery,  # type: ignore[arg-type]
                         outbox, link, lambda: False)  # type: ignore[arg-type]
    return subs, delivery, outbox, link


def _attach(subs: Subscriptions, peer: Peer, req: int) -> None:
    channels = [f"user_Subscription_s{req}", f"user_Usage_s{req}"]
    cursor = format_cursor(EPOCH, 1, 7)
    subs.attach(peer, {"req": req, "user": f"s{req}", "channels": channels,  # type: ignore[arg-type]
                       "resume": {channel: cursor for channel in channels}}, channels)


def test_a_storms_resumes_are_answered_together_with_one_heads_query() -> None:
    subs, delivery, _outbox, link = _subscriptions()
    peer = Peer()
    _attach(subs, peer, 1)
    assert link.wakes == 1  # the first, after a quiet spell: at once
    subs.on_idle()
    assert [a["req"] for a in peer.answers] == [1]
    for req in range(2, 32):  # thirty more as a storm's arrive, one by one
        _attach(subs, peer, req)
    assert link.wakes == 1  # gathered: no wake (and no database round trip) for each
    gevent.sleep(0.05)
    assert link.wakes == 2
    subs.on_idle()
    assert sorted(a["req"] for a in peer.answers) == list(range(1, 32))
    assert len(delivery.heads_asked) == 2  # one relay.heads for the first, one for the 30
    assert all(a["ok"] and not a["resync"] and a["replay"] == [] for a in peer.answers)


def test_the_durable_history_alone_opens_the_channels() -> None:
    subs, delivery, _outbox, _link = _subscriptions()
    for req in range(1, 11):
        _attach(subs, Peer(), req)
    assert delivery.durable.open_channels == 20
    assert delivery.history.open_channels == 0
