"""Where the numbers come from, and each notification's way out to the workers.

``Delivery`` holds the listener's histories and sends every update: the next ``seq`` of its
channel, the client ``update`` message encoded once (``relay.protocol``), and the same bytes
to each worker that has a subscriber for the channel. The ``Router`` (the database link's
handler) hands it what arrives and tells it what ``relay.hello(2)`` says (``follow``);
``Subscriptions`` reads its histories to answer attaches.

With relay's outbox on the database numbers every message at commit and keeps it for its
retention: ``Delivery`` follows the outbox in commit order (``OutboxFollower``: live frames,
holes filled and reconnects caught up by one scan), the ``DurableHistory`` is a cache in front
of it, the **epoch** is the database's and a cursor resumes on any instance, after any
restart. Otherwise (outbox off, relay's SQL of version 1 or none, or per-user LISTEN) the
messages are numbered in memory (``History``) and the epoch names one unbroken life of the
database connection: after a reconnect every channel was deaf for a while (NOTIFY has no
replay), so the history starts afresh and the workers are told to resync.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from relay import bus
from relay.config import Settings
from relay.listener.durable import DurableHistory
from relay.listener.follower import EPOCH_CHANGED, EXPIRED, OutboxFollower
from relay.listener.history import History
from relay.listener.outbox import Outbox, Row
from relay.listener.peers import WorkerPeers
from relay.listener.refcounts import ChannelRefcounts
from relay.listener.stats import LatencyHistogram
from relay.protocol import encode_update_stamped

log = logging.getLogger("relay.listener")

# Resync reasons of the durable history for everybody at once (docs/protocol.md).
HISTORY_CHANGED = "history changed"
UNNUMBERED = "unnumbered message"
# hex(tag | _TAG_BIT)[3:] is f"{tag:08x}" for 0 <= tag < 2**32, in a sixth of its time.
_TAG_BIT = 1 << 32


class Delivery:
    def __init__(self, settings: Settings, refcounts: ChannelRefcounts,
                 peers: WorkerPeers, outbox: Outbox,
                 push_stats: Callable[[], None]) -> None:
        self.settings = settings
        self._refcounts = refcounts
        self._peers = peers  # the workers' server's; read here, never changed
        self._routes = peers.routes  # channel → the workers holding it
        self._outbox = outbox
        self._push_stats = push_stats
        self._epoch = secrets.token_hex(3)
        self._history = self._new_history()
        # While relay's outbox is on: our place in it. With the durable history (the shared
        # channel alone) the database's numbers are the clients' too (_durable).
        self._follower: OutboxFollower | None = None
        self._durable: DurableHistory | None = None
        self._answered = False  # an attach was answered under the current history
        self._outbox_held: str | None = None  # why the database holds the outbox off, if so
        # The position of the kind c "outbox" frame being handled (where the hold changed):
        # the outbox is followed from there when it came on. 0 in the frame is "none"
        # (relay.set, or nothing numbered yet): _released_at says, when our own hello released
        # the hold.
        self._switch_at: int | None = None
        self._retention: object = None  # hello(2)'s retentionSeconds: the cache's age limit
        self._released_at: int | None = None
        self._resync_due = False  # the database came back: tell the workers once synced
        self._reconnect_cursor = ""  # every channel's cursor right after that reconnect
        self._notifications = 0
        self._dropped: Counter[str] = Counter()  # notifications not delivered, by reason
        self._deliveries = 0
        self._latency = LatencyHistogram()

    def _new_history(self) -> History:
        s = self.settings
        return History(self._epoch, s.history_size, s.history_ttl, s.history_max_bytes)

    def _new_durable(self, epoch: str) -> DurableHistory:
        s = self.settings
        history = DurableHistory(epoch, s.history_size, s.history_ttl, s.history_max_bytes)
        history.keep_within(self._retention)
        for channel in self._refcounts.wanted():
            history.open(channel)
        return history

    @property
    def epoch(self) -> str:
        """The epoch clients see: the database's with the durable history, else this
        listener's (one unbroken life of its database connection)."""
        return self._durable.epoch if self._durable is not None else self._epoch

    @property
    def history(self) -> History:
        """The in-memory history (the one that answers while ``durable`` is ``None``)."""
        return self._history

    @property
    def durable(self) -> DurableHistory | None:
        """The durable history, while the database's numbers are the clients'."""
        return self._durable

    @property
    def follower(self) -> OutboxFollower | None:
        """Our place in relay's outbox, while it is on."""
        return self._follower

    def answered(self) -> None:
        """An attach was answered under the current history (a change resyncs it)."""
        self._answered = True

    def drop(self, reason: str) -> None:
        """Count a notification not delivered (``/health``'s ``notificationsDropped``)."""
        self._dropped[reason] += 1

    def expire(self) -> None:
        self._history.expire()
        if self._durable is not None:
            self._durable.expire()

    def _memory_epoch(self) -> None:
        """A new in-memory epoch: nothing before it can be resumed."""
        self._epoch = secrets.token_hex(3)
        self._history = self._new_history()
        # Every open channel starts again on one stream: the workers' resync says so in one
        # field, not with a cursor per channel.
        self._reconnect_cursor = self._history.open_many(self._refcounts.wanted())

    def outbox_frame(self, pos: int) -> None:
        """A kind c "outbox" frame (the hold changed at ``pos``) is being handled: the next
        ``follow`` switches there."""
        self._switch_at = pos or self._released_at
        self._released_at = None

    def follow(self, hello: dict[str, Any], session_start: bool, reconnected: bool,
               per_user: bool) -> None:
        """Act on what ``relay.hello(2)`` says: on a (re)connect (``session_start``), or when
        the database announced a change (a setting, an install, a new epoch)."""
        outbox = (hello.get("outbox") is True and hello.get("protocol") == 1
                  and isinstance(hello.get("epoch"), str) and bool(hello.get("epoch")))
        durable = outbox and not per_user
        switch_at, self._switch_at = self._switch_at, None
        self._retention = hello.get("retentionSeconds")
        if self._durable is not None:
            self._durable.keep_within(self._retention)  # relay.set('retention', …)
        if session_start:
            self._released_at = None  # a release's frame of a lost connection never comes
        released = hello.get("releasedAt")
        if (durable and self._durable is None and not session_start and switch_at is None
                and isinstance(released, int)):
            # Our own hello released the hold: kind n frames committed before the release
            # came with its answer and are still to be delivered, in memory. Switch at the
            # release's kind c frame, which follows them in the stream.
            self._released_at = released
            return
        held = hello.get("outboxHeld") if hello.get("outboxSetting") == "on" else None
        if held != self._outbox_held:
            self._outbox_held = held if isinstance(held, str) else None
            if self._outbox_held:
                log.warning("relay's outbox is held off by the database (%s): messages are "
                            "numbered in memory until it is released", self._outbox_held)
        if not outbox:
            self._follower = None
        elif self._follower is None or (reconnected and not durable):
            # Following starts at the database's present. In memory mode a reconnect resyncs
            # everybody anyway: no catch-up, which could not cover per-user channels.
            self._follower = OutboxFollower(self._outbox, self.deliver_row, self.deliver_page)
            self._follower.start(hello, switch_at)
        if not durable:
            if self._durable is not None:
                self._durable = None
                self._memory_epoch()
                self._history_changed(HISTORY_CHANGED, session_start)
            elif reconnected:
                self._memory_epoch()
                self._resync_due = True
            return
        assert self._follower is not None
        if self._durable is None:
            # Relay's outbox just came on (installed, switched on, per-user LISTEN off), or this
            # listener starts: the database's numbers from now on. Clients answered in memory
            # get one resync; a new listener has answered nobody yet.
            self._durable = self._new_durable(self._follower.epoch)
            if self._answered:
                self._history_changed(HISTORY_CHANGED, False)
            log.info("durable history on: epoch %s, following the outbox from position %d",
                     self._durable.epoch, self._follower.last_pos)
            return
        problem = self._follower.check(hello)
        if problem == EPOCH_CHANGED:
            log.warning("the database's history changed (new epoch %s: %s): every client "
                        "resyncs", hello.get("epoch"), hello.get("epochReason") or "unknown")
        elif problem == EXPIRED:
            log.warning("this listener was away longer than the outbox's retention: messages "
                        "it never read were cleaned up; every client resyncs")
        elif problem is not None:  # rewound: a copy of the database diverged under us
            epoch = self._outbox.new_epoch("rewind detected by a listener")
            log.warning("the database's history was rewound under this listener (the message "
                        "at its position differs): started epoch %s; every client resyncs",
                        epoch)
            hello = {**hello, "epoch": epoch}
        if problem is None:
            started = time.monotonic()
            count = self._follower.catch_up()  # ONE scan, every channel: nothing missed
            if session_start:
                log.info("caught up from the outbox after reconnecting: %d messages committed "
                         "meanwhile, delivered in %.0f ms (position %d)", count,
                         (time.monotonic() - started) * 1000, self._follower.last_pos)
            return
        self._follower.start(hello)
        self._durable = self._new_durable(self._follower.epoch)
        self._history_changed(EXPIRED if problem == EXPIRED else HISTORY_CHANGED, False)

    def _history_changed(self, reason: str, later: bool) -> None:
        """Every client's cursors are of another history now: tell the workers (``later``:
        once every wanted channel is heard again, after a reconnect's sync)."""
        self._answered = False
        if self._durable is None:
            if later:
                self._resync_due = True
                return
            frame = bus.encode(bus.RESYNC, {"reason": reason, "cursors": {},
                                            "cursor": self._reconnect_cursor})
            for peer in list(self._peers):
                peer.send(frame)
        else:
            # Every open channel resyncs to its newest message at our position in the new
            # history; what was committed after it follows as updates (the catch-up below),
            # not folded into the refetch.
            durable, follower = self._durable, self._follower
            assert follower is not None
            channels = durable.channels()
            heads = follower.heads_here(channels)
            for channel in channels:
                durable.learn(channel, heads.get(channel))
            cursors = durable.cursors(channels)
            for peer in list(self._peers):
                mine = {channel: cursors[channel] for channel in peer.channels
                        if channel in cursors}
                if mine:
                    peer.send(bus.encode(bus.RESYNC, {"reason": reason, "cursors": mine}))
            follower.catch_up()
        log.info("told %d workers to resync %d channels (%s)", len(self._peers),
                 self._refcounts.open_count, reason)
        self._push_stats()

    def resync_if_due(self) -> None:
        """After a reconnect's sync (every wanted channel heard again): tell the workers to
        resync, once."""
        if self._resync_due and self._durable is not None:
            self._resync_due = False
        if self._resync_due:
            self._resync_due = False
            # Right after a reconnect every open channel is at the start of one stream: a
            # single cursor for all of them, one small frame per worker.
            frame = bus.encode(bus.RESYNC, {"reason": "database reconnected", "cursors": {},
                                            "cursor": self._reconnect_cursor})
            for peer in list(self._peers):
                peer.send(frame)
            log.info("told %d workers to resync %d channels", len(self._peers),
                     self._refcounts.open_count)
            self._push_stats()

    def learn(self, channels: list[str]) -> None:
        """Ask the database for the heads of ``channels`` (open, head unknown): one
        ``relay.heads`` per 10,000. A head newer than our position is read first, so that
        what we know of a channel is always what we delivered."""
        durable, follower = self._durable, self._follower
        if not channels or durable is None or follower is None:
            return
        heads = self._outbox.heads(channels)
        if any(head.pos > follower.last_pos for head in heads.values()):
            follower.catch_up()
        for channel in channels:
            durable.learn(channel, heads.get(channel))

    def unnumbered(self, channel: str) -> None:
        """A message the database did not number although the outbox is on (its numbering
        failed and the write committed without it): the channel's clients refetch."""
        self._dropped["unnumbered"] += 1
        durable = self._durable
        if durable is None or not self._refcounts.is_open(channel):
            return
        cursor = durable.cursor(channel)
        frame = bus.encode(bus.RESYNC, {"reason": UNNUMBERED, "cursors": {channel: cursor}})
        for peer in self._peers:
            if peer.channels.get(channel):
                peer.send(frame)

    def deliver_row(self, row: Row) -> None:
        """A message of the outbox, in commit order (the follower's), to its subscribers."""
        self.deliver_page((row,))

    def deliver_page(self, rows: Sequence[tuple[int, str, int, int, str]]) -> None:
        """Messages of the outbox (``pos, channel, seq, tag, payload``), in commit order (the
        follower's catch-up, a page at a time), to their subscribers: a burst's 50,000 rows
        go through this loop."""
        durable = self._durable
        if durable is None:  # the outbox is on, but numbers are this listener's
            for row in rows:
                self.deliver(row[1], row[4])
            return
        is_open, head_of, send = self._refcounts.is_open, durable.head, self._send_update
        for _pos, channel, seq, tag, payload in rows:
            if not is_open(channel):
                self._dropped["unsubscribed"] += 1
                continue
            head = head_of(channel)
            if head is not None and seq != head[0] + 1:
                if seq <= head[0]:
                    self._dropped["duplicate"] += 1
                    continue
                # Commit order covers every seq, so this "never" happens; if it does, the
                # missing messages are read, not resynced.
                self._dropped["channel gap"] += 1
                if not self._fill(channel, head[0], seq):
                    continue
            send(durable, channel, payload, seq, tag)

    def _fill(self, channel: str, head: int, seq: int) -> bool:
        """Deliver ``channel``'s messages after ``head`` and before ``seq`` from the outbox;
        ``False`` (and the channel's clients resync) when it no longer has them all."""
        durable = self._durable
        assert durable is not None
        rows = self._outbox.read_channels([(channel, head + 1, seq - head - 1)])[0]
        if [row.seq for row in rows] != list(range(head + 1, seq)):
            self.unnumbered(channel)
            return True
        for row in rows:
            self._send_update(durable, channel, row.payload, row.seq, row.tag)
        return True

    def _send_update(self, durable: DurableHistory, channel: str, payload: str, seq: int,
                     tag: int) -> None:
        self._notifications += 1
        message, stamp = encode_update_stamped(
            channel, payload, durable.epoch, seq,
            hex(tag | _TAG_BIT)[3:] if 0 <= tag < _TAG_BIT else f"{tag:08x}")
        self._latency.observe(stamp)
        durable.record(channel, seq, tag, message)
        route = self._routes.get(channel)
        if route is not None:  # _fan_out, inline: once per routed message
            frame = bus.encode_update(channel, message)
            if type(route) is tuple:
                for peer in route:
                    peer.send(frame)
                    self._deliveries += peer.channels[channel]
            else:
                route.send(frame)  # type: ignore[union-attr]  # one worker, not a tuple
                self._deliveries += route.channels[channel]  # type: ignore[union-attr]

    def deliver(self, channel: str, payload: str) -> None:
        if not self._refcounts.is_open(channel):
            self._dropped["unsubscribed"] += 1  # nobody here wants it: O(1), then nothing
            return
        self._notifications += 1
        stream, seq = self._history.next_seq(channel)
        message, stamp = encode_update_stamped(channel, payload, stream, seq)
        self._latency.observe(stamp)
        self._history.record(channel, seq, message)
        self._fan_out(channel, message)

    def _fan_out(self, channel: str, message: bytes) -> None:
        """One frame for the channel, to each worker that has subscribers on it."""
        route = self._routes.get(channel)
        if route is None:
            return
        frame = bus.encode_update(channel, message)
        for peer in route if type(route) is tuple else (route,):  # type: ignore[union-attr]
            peer.send(frame)
            self._deliveries += peer.channels[channel]

    def figures(self) -> dict[str, Any]:
        """Its part of the instance's figures (``Listener.stats``)."""
        follower = self._follower
        return {
            "history": "durable" if self._durable is not None else "memory",
            "outboxPosition": follower.last_pos if follower is not None else None,
            "outboxCatchUps": follower.scans if follower is not None else 0,
            "outboxCaughtUp": follower.scanned if follower is not None else 0,
            "outboxHoles": follower.holes if follower is not None else 0,
            "epoch": self.epoch,
            "notifications": self._notifications,
            "notificationsDropped": dict(self._dropped),
            "deliveries": self._deliveries,
            "historyBytes": (self._durable or self._history).total_bytes,
            "latency": self._latency.snapshot(),
        }
