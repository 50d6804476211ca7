"""What the workers' connections want, and the answer to each attach.

``Subscriptions`` counts each attach's channels (``ChannelRefcounts``: a channel is open while
somebody wants it, then lingers), opens them in ``Delivery``'s history, and answers the
attach once its channels are heard: with its replay from the history, or a resync. Until
then the attach waits; the ``Router`` answers the waiting ones when the database link has
LISTENed them (``on_synced``) or, with the durable history, from the link's greenlet, which
may ask the database (``on_idle``); attaches that arrive close together are answered
together, with one ``relay.heads`` and one read for all of them (``AnswerPacer``). The
``Workers`` tell it what attaches and what goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import gevent

from relay import bus
from relay.config import Settings
from relay.listener.delivery import Delivery
from relay.listener.history import Resume
from relay.listener.outbox import Outbox
from relay.listener.peers import WorkerPeer, str_list
from relay.listener.refcounts import ChannelRefcounts

_WS_HEADER_BYTES = 10  # the most a server text frame adds to a message
# Channel reads (relay.read_channel) per statement when many clients resume at once.
_READS_PER_STATEMENT = 500
# With the durable history, attaches arriving within this long of an answer wait for the
# next one: a reconnect storm's (one or two per read of a worker's socket) are answered with
# one relay.heads and one read for many, not a database round trip each.
GATHER_SECONDS = 0.005


class Listening(Protocol):
    """What of the database link an answer depends on (``DatabaseLink``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def listening(self) -> AbstractSet[str]: ...

    def wake(self) -> None: ...


class AnswerPacer:
    """When the link answers the waiting attaches: at once after a quiet spell (a lone
    client waits for nothing), else at most every ``interval`` (a storm's are gathered)."""

    def __init__(self, wake: Callable[[], None], interval: float = GATHER_SECONDS) -> None:
        self._wake = wake
        self.interval = interval
        self._answered_at = -interval
        self._timer: Any = None  # a loop timer while a wake is due

    def want(self) -> None:
        """An attach is waiting: wake the link now, or at the end of the interval."""
        if self._timer is not None:
            return  # already due
        wait = self._answered_at + self.interval - time.monotonic()
        if wait <= 0:
            self._wake()
            return
        self._timer = gevent.get_hub().loop.timer(wait)
        self._timer.start(self._due)

    def _due(self) -> None:
        self._timer.close()
        self._timer = None
        self._wake()

    def answering(self) -> None:
        """The link answers every waiting attach now."""
        self._answered_at = time.monotonic()


class Subscriptions:
    def __init__(self, settings: Settings, refcounts: ChannelRefcounts, delivery: Delivery,
                 outbox: Outbox, link: Listening, per_user: Callable[[], bool]) -> None:
        self.settings = settings
        self._refcounts = refcounts
        self._delivery = delivery
        self._outbox = outbox
        self._db = link
        self._per_user = per_user  # per-user LISTEN is on (the Router's decision)
        self._pending: list[tuple[WorkerPeer, dict[str, Any]]] = []  # attaches awaiting LISTEN
        self._pacer = AnswerPacer(link.wake)  # the durable history's

    def attach(self, peer: WorkerPeer, request: dict[str, Any], channels: list[str]) -> None:
        """A connection counted on ``peer`` wants ``channels``: answer it, or let it wait."""
        history, durable = self._delivery.history, self._delivery.durable
        opened = self._refcounts.add(channels)
        if durable is None:
            for channel in opened:
                history.open(channel)
        # With the durable history the in-memory one is not read, and is built afresh from
        # the wanted channels if the durable one goes (Delivery._memory_epoch): opening each
        # channel there too cost every attach two stream views and the listener a dict entry
        # per channel.
        if durable is not None:
            for channel in channels:
                durable.open(channel)  # a no-op when open (a lingering one, say)
            # Answered from the link's greenlet, which may ask the database (heads, reads),
            # every waiting attach at once.
            self._pending.append((peer, request))
            self._pacer.want()
        elif self._ready(channels):
            self._answer_attach(peer, request)
        else:
            self._pending.append((peer, request))
            self._db.wake()

    def _ready(self, channels: list[str]) -> bool:
        """Whether every notification on ``channels`` is heard from now on: always through
        the shared channel once connected; with per-user LISTEN, once each is LISTENed."""
        if not self._db.connected:
            return False
        return not self._per_user() or all(ch in self._db.listening for ch in channels)

    def _answer_attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        if peer.closed:
            return
        history = self._delivery.history
        channels = str_list(request.get("channels"))
        resume = request.get("resume") if isinstance(request.get("resume"), dict) else {}
        # Half the client's outbound queue at most (see History.resume).
        plan = history.resume(
            channels, resume,
            max_bytes=min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2,
            max_messages=self.settings.queue_max_messages // 2, overhead=_WS_HEADER_BYTES)
        if plan.resync and request.get("reattach"):
            # A worker attaching its connections again: they were this listener's
            # predecessor's, whose history died with it.
            plan = Resume(plan.replay, plan.resync, "listener restarted")
        self._send_attached(peer, request, plan, history.cursors(channels), history.epoch)

    def _send_attached(self, peer: WorkerPeer, request: dict[str, Any], plan: Resume,
                       cursors: dict[str, str], epoch: str) -> None:
        self._delivery.answered()
        answer: dict[str, Any] = {
            "req": request.get("req"), "ok": True, "epoch": epoch, "cursors": cursors,
            "replay": [message.decode() for message in plan.replay], "resync": list(plan.resync)}
        if plan.reason:
            answer["reason"] = plan.reason
        peer.send(bus.encode(bus.ATTACHED, answer))

    def on_synced(self) -> None:
        """Every wanted channel is LISTENed: answer the attaches waiting for that."""
        if self._delivery.durable is not None:
            # Attaches that arrive while it reads the database stay waiting (they woke the
            # link): never answered from the in-memory history below.
            self._answer_waiting()
        else:
            pending, self._pending = self._pending, []
            for peer, request in pending:
                # An attach that arrived during this sync waits for the next one (its new
                # channels bumped the refcounts' version): `connected` must never precede the
                # LISTEN.
                if self._ready(str_list(request.get("channels"))):
                    self._answer_attach(peer, request)
                else:
                    self._pending.append((peer, request))

    def on_idle(self) -> None:
        """The link's queued work: with the durable history, the attaches waiting."""
        if self._delivery.durable is not None and self._pending and self._db.connected:
            self._answer_waiting()

    def _answer_waiting(self) -> None:
        """Answer every waiting attach from the durable history: the unknown heads of all of
        them in one ``relay.heads``, what the cache cannot replay in one read per 500
        channels (``relay.read_channel``), every read bounded by the client's budget."""
        durable = self._delivery.durable
        assert durable is not None
        waiting = [(peer, request) for peer, request in self._pending if not peer.closed]
        self._pending = []
        if not waiting:
            return
        self._pacer.answering()
        self._delivery.learn(durable.unknown(
            channel for _, request in waiting for channel in str_list(request.get("channels"))))
        max_messages = self.settings.queue_max_messages // 2
        max_bytes = min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2
        plans = []
        reads: list[tuple[str, int, int]] = []
        for peer, request in waiting:
            channels = str_list(request.get("channels"))
            resume = request.get("resume") if isinstance(request.get("resume"), dict) else {}
            plan = durable.plan(channels, resume, max_messages)
            plans.append((peer, request, channels, plan, len(reads)))
            reads.extend(plan.reads)
        rows = []
        for start in range(0, len(reads), _READS_PER_STATEMENT):
            rows.extend(self._outbox.read_channels(reads[start:start + _READS_PER_STATEMENT]))
        for peer, request, channels, plan, first in plans:
            if peer.closed:
                continue
            resume = durable.finish(plan, rows[first:first + len(plan.reads)], max_bytes,
                                    max_messages, _WS_HEADER_BYTES)
            self._send_attached(peer, request, resume, durable.cursors(channels),
                                durable.epoch)

    def unwant(self, channels: list[str], count: int = 1) -> None:
        """``count`` connections no longer want ``channels``."""
        closed = self._refcounts.remove(channels, count)  # only without linger
        self._closed(closed)

    def expire(self) -> None:
        """Close the channels whose linger is over."""
        self._closed(self._refcounts.expire())

    def _closed(self, channels: list[str]) -> None:
        history, durable = self._delivery.history, self._delivery.durable
        for channel in channels:
            history.close(channel)
            if durable is not None:
                durable.close(channel)
        if channels and self._per_user():
            self._db.wake()  # UNLISTEN them

    def forget(self, peer: WorkerPeer) -> None:
        """``peer`` is gone: none of its attaches waits any more."""
        self._pending = [(p, r) for p, r in self._pending if p is not peer]
