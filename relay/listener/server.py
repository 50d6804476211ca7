"""The listener process: the instance's one PostgreSQL connection, fanned out to its workers.

Started (and restarted) by ``relay.supervisor`` as ``python -m relay listen``; never by
hand. ``Listener`` is the process's orchestrator: it serves the workers on the listener's
Unix socket (``bus`` framing, one ``WorkerPeer`` each), counts what their connections
attach (``ChannelRefcounts``: a channel is open while somebody wants it), answers each
attach once it can hear its channels, with a replay from the ``History`` or a resync, and
routes every notification: the next ``seq`` of its channel, the client ``update`` message
encoded once (``relay.protocol``), and the same bytes to each worker that has a subscriber
for the channel. It is the database link's ``DatabaseHandler``.

Notifications come two ways. relay's own SQL publishes every message on one shared channel
(``RELAY_NOTIFY_CHANNEL``, always LISTENed) with the logical channel in a fixed header
(``relay.listener.frames``): a message for a channel nobody here wants is dropped after a
dict lookup, so the database's cost does not grow with the users. An app's own triggers may
``pg_notify`` each user's channel: those are heard only with per-user LISTEN, which
``RELAY_USER_CHANNELS`` turns on (``listen``), off (``off``), or on while the database has
none of relay's SQL (``auto``, switching when ``db install`` announces itself). A channel fed
both ways is one stream: every notification, whichever way it came, is the next ``seq`` of
its channel, in the order PostgreSQL delivers them (commit order); nothing is deduplicated.

Where the messages are numbered depends on the database. With relay's outbox on
(``relay.hello(2)`` says so) the database numbers every message at commit and keeps it for
its retention: the listener follows the outbox in commit order (``OutboxFollower``: live
frames, holes filled and reconnects caught up by one scan), the ``DurableHistory`` is a
cache in front of it, the **epoch** is the database's and a cursor resumes on any instance,
after any restart. Otherwise (outbox off, relay's SQL of version 1 or none, or per-user
LISTEN) the listener numbers them in memory (``History``) and its epoch names one unbroken
life of the database connection: after a reconnect every channel was deaf for a while
(NOTIFY has no replay), so the history starts afresh and the workers are told to resync.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Set as AbstractSet
from typing import Any

import gevent
import psycopg2.extensions
import psycopg2.extras

from relay import bus, closecodes, listener_socket
from relay.channels import valid_channel
from relay.config import Settings
from relay.listener import frames
from relay.listener.cleanup import OutboxCleaner
from relay.listener.database import DatabaseInfo, DatabaseLink
from relay.listener.durable import DurableHistory
from relay.listener.follower import EPOCH_CHANGED, EXPIRED, OutboxFollower
from relay.listener.history import History, Resume
from relay.listener.outbox import Outbox, Row
from relay.listener.peers import WorkerPeer
from relay.listener.refcounts import ChannelRefcounts, release
from relay.listener.stats import LatencyHistogram, QueueGauge, WorkerTotals
from relay.protocol import encode_update

log = logging.getLogger("relay.listener")

_WS_HEADER_BYTES = 10  # the most a server text frame adds to a message
# Workers serve /health and /metrics from the figures the listener pushes this often, so that
# a flood of either costs the listener nothing per request (issue 14, item 7).
STATS_PUSH_SECONDS = 1.0
# PostgreSQL before 19 scans a session's LISTENed channels for every notification (trap 11).
MANY_CHANNELS = 10_000
_FIXED_LISTEN = 190000  # server_version_num of PostgreSQL 19, whose LISTEN uses hash tables
# Above this NOTIFY queue usage relay's writers stop sending a frame per message (design §3):
# the listener reads the outbox this often instead, until the queue drains.
_QUEUE_PRESSURE = 0.5
_PRESSURE_POLL_SECONDS = 0.1
# Channel reads (relay.read_channel) per statement when many clients resume at once.
_READS_PER_STATEMENT = 500
# Resync reasons of the durable history for everybody at once (docs/protocol.md).
HISTORY_CHANGED = "history changed"
UNNUMBERED = "unnumbered message"


class Listener:
    def __init__(self, settings: Settings, instance_started_at: float | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.instance_started_at = instance_started_at or self.started_at
        self._peers: set[WorkerPeer] = set()
        self._refcounts = ChannelRefcounts(settings.linger_seconds)
        self._users: Counter[str] = Counter()  # user → connections over all workers
        self._connections = 0  # the sum of _users' values, kept as they change
        self._epoch = secrets.token_hex(3)
        self._history = self._new_history()
        self._db = DatabaseLink(settings, self)
        self._outbox = Outbox(self._db.query)
        # While relay's outbox is on: our place in it. With the durable history (the shared
        # channel alone) the database's numbers are the clients' too (_durable).
        self._follower: OutboxFollower | None = None
        self._durable: DurableHistory | None = None
        self._answered = False  # an attach was answered under the current history
        self._cleaner = OutboxCleaner(settings, lambda: self._follower is not None)
        self._catch_up_due = False
        self._outbox_held: str | None = None  # why the database holds the outbox off, if so
        self._muted = False  # record deliveries without sending them (before a resync)
        self._pressure = False  # the NOTIFY queue is over half full: poll the outbox
        self._sessions = 0  # database connections made so far
        self._session_started = False  # on_database not yet called on this connection
        self._resync_due = False  # the database came back: tell the workers once synced
        self._reconnect_cursor = ""  # every channel's cursor right after that reconnect
        self._pending: list[tuple[WorkerPeer, dict[str, Any]]] = []  # attaches awaiting LISTEN
        self._peer_numbers = 0
        # The shared channel(s): RELAY_NOTIFY_CHANNEL, and the database's own if it differs.
        self._shared: tuple[str, ...] = (settings.notify_channel,)
        # Per-user LISTEN: `listen` always; `auto` until the database has relay's SQL.
        self._installed = False
        self._relay_sql: dict[str, Any] = {}
        self._per_user = settings.user_channels != "off"
        self._refcounts.track_changes(self._per_user)
        self._full_sync = False  # the link must compare every channel (mode or shared changed)
        self._mode_version = 0
        self._warned: set[str] = set()  # one-time warnings already logged
        self._notifications = 0
        self._dropped: Counter[str] = Counter()  # notifications not delivered, by reason
        self._deliveries = 0
        self._latency = LatencyHistogram()
        self._queue = QueueGauge()
        self._worker_totals = WorkerTotals()
        self._stats_built = 0
        # relay_revoke(): user → time (epoch seconds) before which their tokens are void.
        self._revoked: dict[str, float] = {}
        self._revoked_swept = 0.0

    def _new_history(self) -> History:
        s = self.settings
        return History(self._epoch, s.history_size, s.history_ttl, s.history_max_bytes)

    def _new_durable(self, epoch: str) -> DurableHistory:
        s = self.settings
        history = DurableHistory(epoch, s.history_size, s.history_ttl, s.history_max_bytes)
        for channel in self._refcounts.wanted():
            history.open(channel)
        return history

    @property
    def epoch(self) -> str:
        """The epoch clients see: the database's with the durable history, else this
        listener's (one unbroken life of its database connection)."""
        return self._durable.epoch if self._durable is not None else self._epoch

    # ----- the database link's handler -----

    def shared_channels(self) -> tuple[str, ...]:
        return self._shared

    @property
    def wanted_version(self) -> int:
        return self._refcounts.version + self._mode_version

    def wanted_channels(self) -> AbstractSet[str]:
        return self._refcounts.wanted() if self._per_user else frozenset()

    def wanted_changes(self) -> AbstractSet[str] | None:
        changes = self._refcounts.take_changes()
        if self._full_sync:
            self._full_sync = False
            return None
        return changes

    def is_wanted(self, channel: str) -> bool:
        return self._per_user and self._refcounts.is_open(channel)

    def on_connected(self) -> None:
        self._sessions += 1
        self._session_started = True

    def _memory_epoch(self) -> None:
        """A new in-memory epoch: nothing before it can be resumed."""
        self._epoch = secrets.token_hex(3)
        self._history = self._new_history()
        # Every open channel starts again on one stream: the workers' resync says so in one
        # field, not with a cursor per channel.
        self._reconnect_cursor = self._history.open_many(self._refcounts.wanted())

    def on_database(self, info: DatabaseInfo) -> None:
        hello = info.hello or {}
        self._relay_sql = hello
        channel = hello.get("notifyChannel")
        shared: tuple[str, ...] = (self.settings.notify_channel,)
        if isinstance(channel, str) and channel and channel != self.settings.notify_channel:
            self._warn_once(f"channel:{channel}",
                            "RELAY_NOTIFY_CHANNEL is %r but this database's relay_publish "
                            "notifies %r: listening to both; set RELAY_NOTIFY_CHANNEL=%s",
                            self.settings.notify_channel, channel, channel)
            shared += (channel,)
        if shared != self._shared:
            self._shared = shared
            self._resync_link()
        protocol = hello.get("protocol")
        if protocol not in (None, 1):
            self._warn_once(f"protocol:{protocol}",
                            "relay's SQL in this database speaks wire protocol r%s; this relay "
                            "speaks r1 and drops what it does not understand: upgrade relay",
                            protocol)
        self._set_installed(info.installed)
        if info.revocations:
            self._revoke(info.revocations)
        session_start, self._session_started = self._session_started, False
        self._follow(hello, session_start)

    # ----- where the numbers come from: the outbox, or memory -----

    def _follow(self, hello: dict[str, Any], session_start: bool) -> None:
        """Act on what ``relay.hello(2)`` says: on a (re)connect (``session_start``), or when
        the database announced a change (a setting, an install, a new epoch)."""
        outbox = (hello.get("outbox") is True and hello.get("protocol") == 1
                  and isinstance(hello.get("epoch"), str) and bool(hello.get("epoch")))
        durable = outbox and not self._per_user
        reconnected = session_start and self._sessions > 1
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
            self._follower = OutboxFollower(self._outbox, self._deliver_row)
            self._follower.start(hello)
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
            # The heads of every open channel, as of our position in the new history: what
            # is read to get there is recorded, not sent (the clients refetch it all).
            durable = self._durable
            self._muted = True
            try:
                self._learn(durable.channels())
            finally:
                self._muted = False
            cursors = durable.cursors(durable.channels())
            for peer in list(self._peers):
                mine = {channel: cursors[channel] for channel in peer.channels
                        if channel in cursors}
                if mine:
                    peer.send(bus.encode(bus.RESYNC, {"reason": reason, "cursors": mine}))
        log.info("told %d workers to resync %d channels (%s)", len(self._peers),
                 self._refcounts.open_count, reason)
        self._push_stats()

    def _learn(self, channels: list[str]) -> None:
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

    def on_checked(self, queue_usage: float, installed: bool) -> None:
        change = self._queue.observe(queue_usage)
        if change == "warn":
            log.warning("PostgreSQL's NOTIFY queue is %.0f%% full: when it is full, every "
                        "transaction that notifies fails at commit (a session that LISTENs "
                        "and stays in a transaction holds it; see pg_stat_activity)",
                        queue_usage * 100)
        elif change == "clear":
            log.info("PostgreSQL's NOTIFY queue is back to %.0f%% full", queue_usage * 100)
        pressure = queue_usage >= _QUEUE_PRESSURE and self._follower is not None
        if pressure and not self._pressure:
            gevent.spawn(self._poll_under_pressure)
        self._pressure = pressure
        if installed and not self._installed:
            self._db.refresh()  # read relay.hello(), then switch
        elif not installed and self._installed:
            self._set_installed(False)
            self._follow({}, False)  # no outbox any more: numbers in memory again

    def _poll_under_pressure(self) -> None:
        """Over half full, relay's writers send one sync frame per transaction at most (and
        none past 90%): read the outbox every 100 ms until the queue drains."""
        while self._pressure:
            self._catch_up_due = True
            self._db.wake()
            gevent.sleep(_PRESSURE_POLL_SECONDS)

    def on_idle(self) -> None:
        if self._catch_up_due:
            self._catch_up_due = False
            if self._follower is not None:
                self._follower.catch_up()
        if self._durable is not None and self._pending and self._db.connected:
            self._answer_waiting()

    def _set_installed(self, installed: bool) -> None:
        self._installed = installed
        mode = self.settings.user_channels
        per_user = mode == "listen" or (mode == "auto" and not installed)
        if per_user == self._per_user:
            return
        self._per_user = per_user
        self._refcounts.track_changes(per_user)
        if mode == "auto":
            log.info("RELAY_USER_CHANNELS=auto: relay's SQL is %s: per-user LISTEN %s",
                     "installed" if installed else "not installed",
                     "off, the shared channel alone" if not per_user else "on")
        self._resync_link()
        self._push_stats()

    def _resync_link(self) -> None:
        """The link compares every channel on its next wake-up (mode or shared changed)."""
        self._full_sync = True
        self._mode_version += 1
        self._db.wake()

    def on_synced(self) -> None:
        """Every wanted channel is LISTENed: answer the attaches waiting for that, then (after
        a reconnect) tell the workers to resync."""
        if self._durable is not None:
            # Attaches that arrive while it reads the database stay waiting (they woke the
            # link): never answered from the in-memory history below.
            self._answer_waiting()
        else:
            pending, self._pending = self._pending, []
            for peer, request in pending:
                # An attach that arrived during this sync waits for the next one (its new
                # channels bumped the refcounts' version): `connected` must never precede the
                # LISTEN.
                if self._ready(_str_list(request.get("channels"))):
                    self._answer_attach(peer, request)
                else:
                    self._pending.append((peer, request))
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
        self._check_listened()

    def _check_listened(self) -> None:
        listened = len(self._db.listening)
        if listened <= MANY_CHANNELS * 9 // 10:
            self._warned.discard("many")
        elif (listened > MANY_CHANNELS and self._db.server_version < _FIXED_LISTEN
              and "many" not in self._warned):
            self._warned.add("many")
            log.warning(
                "LISTENing %d channels, one per connected user's channel: PostgreSQL %s "
                "checks every notification in the database against each of them in this one "
                "backend (about 40 us per notification at 10,000 channels, 170 us at 50,000) "
                "and a reconnect LISTENs them again one by one. RELAY_USER_CHANNELS=off (or "
                "auto, after python -m relay db install) listens to relay's one shared "
                "channel instead", listened, self._db.server_version // 10000)

    def on_notification(self, channel: str, payload: str) -> None:
        if channel not in self._shared:
            self._deliver(channel, payload)  # per-user LISTEN: an app's own pg_notify
            return
        frame = frames.parse(payload)
        if frame is None:
            # Another program's NOTIFY on relay's channel, or a forgery without the shape.
            self._dropped["foreign"] += 1
            self._warn_once("foreign", "a notification on relay's channel %r is not relay's "
                            "(no r1 header); dropped (counted as foreign)", channel)
        elif frame.kind in (frames.NUMBERED, frames.ROW):
            tag = frames.tag_value(frame.tag)
            body = frame.body if frame.kind == frames.NUMBERED else None
            if tag is None or not frame.channel:
                self._dropped["foreign"] += 1  # not what relay's SQL writes
            elif self._follower is not None:
                self._follower.on_message(frame.pos, frame.channel, frame.seq, tag, body)
            elif body is not None:
                self._deliver(frame.channel, body)  # outbox news not heard yet: in memory
            elif (row := self._outbox.row(frame.pos)) is not None:
                self._deliver(row.channel, row.payload)
        elif frame.kind == frames.MESSAGE:
            if self._durable is not None:
                self._unnumbered(frame.channel)
            else:
                self._deliver(frame.channel, frame.body)
        elif frame.kind == frames.SYNC:
            if self._follower is not None:
                self._follower.catch_up()
        elif frame.kind in (frames.EPOCH, frames.INSTALLED, frames.SETTING):
            # Re-read relay.hello(2) now, in order with the frames around it: `auto` switches
            # on an install, the outbox may have come on or gone off, a new epoch resyncs.
            self.on_database(self._db.read_info())
        elif frame.kind == frames.REVOKED:
            try:
                at = float(frame.body)
            except ValueError:
                at = float("nan")
            if frame.channel and at == at:  # not NaN
                log.info("user %s revoked: tokens issued before %.3f are void", frame.channel, at)
                self._revoke({frame.channel: at})
            else:
                self._dropped["bad revocation"] += 1
        elif self._follower is not None:
            # A kind of a newer SQL: the outbox is the truth (design §3).
            self._follower.catch_up()
        else:
            self._dropped["unknown kind"] += 1
            self._warn_once(f"kind:{frame.kind}", "relay's SQL sent kind %r, which this relay "
                            "does not speak; dropped: upgrade relay", frame.kind)

    def _revoke(self, revoked: dict[str, float]) -> None:
        """Remember each user's latest revocation, and tell every worker (which closes the
        connections whose tokens it voids). Attaches are checked here, in the stream's order,
        so a connection is either refused or attached before the workers hear of it."""
        changed = {user: at for user, at in revoked.items()
                   if at > self._revoked.get(user, float("-inf"))}
        if not changed:
            return
        self._revoked.update(changed)
        frame = bus.encode(bus.REVOKED, {"revoked": changed})
        for peer in self._peers:
            peer.send(frame)

    def _unnumbered(self, channel: str) -> None:
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

    def _deliver_row(self, row: Row) -> None:
        """A message of the outbox, in commit order (the follower's), to its subscribers."""
        durable = self._durable
        if durable is None:  # the outbox is on, but numbers are this listener's
            self._deliver(row.channel, row.payload)
            return
        channel = row.channel
        if not self._refcounts.is_open(channel):
            self._dropped["unsubscribed"] += 1
            return
        head = durable.head(channel)
        if head is not None and row.seq != head[0] + 1:
            if row.seq <= head[0]:
                self._dropped["duplicate"] += 1
                return
            # Commit order covers every seq, so this "never" happens; if it does, the
            # missing messages are read, not resynced.
            self._dropped["channel gap"] += 1
            if not self._fill(channel, head[0], row.seq):
                return
        self._send_update(durable, channel, row.payload, row.seq, row.tag)

    def _fill(self, channel: str, head: int, seq: int) -> bool:
        """Deliver ``channel``'s messages after ``head`` and before ``seq`` from the outbox;
        ``False`` (and the channel's clients resync) when it no longer has them all."""
        durable = self._durable
        assert durable is not None
        rows = self._outbox.read_channels([(channel, head + 1, seq - head - 1)])[0]
        if [row.seq for row in rows] != list(range(head + 1, seq)):
            self._unnumbered(channel)
            return True
        for row in rows:
            self._send_update(durable, channel, row.payload, row.seq, row.tag)
        return True

    def _send_update(self, durable: DurableHistory, channel: str, payload: str, seq: int,
                     tag: int) -> None:
        self._notifications += 1
        self._latency.observe(payload)
        message = encode_update(channel, payload, durable.epoch, seq, f"{tag:08x}")
        durable.record(channel, seq, tag, message)
        if self._muted:
            return
        self._fan_out(channel, message)

    def _deliver(self, channel: str, payload: str) -> None:
        if not self._refcounts.is_open(channel):
            self._dropped["unsubscribed"] += 1  # nobody here wants it: O(1), then nothing
            return
        self._notifications += 1
        self._latency.observe(payload)
        stream, seq = self._history.next_seq(channel)
        message = encode_update(channel, payload, stream, seq)
        self._history.record(channel, seq, message)
        self._fan_out(channel, message)

    def _fan_out(self, channel: str, message: bytes) -> None:
        """One frame for the channel, to each worker that has subscribers on it."""
        frame = bus.encode_update(channel, message)
        for peer in self._peers:
            subscribers = peer.channels.get(channel)
            if subscribers:
                peer.send(frame)
                self._deliveries += subscribers

    def on_disconnected(self) -> None:
        self._push_stats()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # ----- the workers -----

    def serve_forever(self) -> None:
        path = self.settings.socket_path
        listener_socket.claim(path)  # a squatted or live path is refused, never replaced
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # only this user may talk to the listener
        try:
            server.bind(path)
        finally:
            os.umask(old_umask)
        server.listen(256)
        log.info("listener ready on %s", path)
        gevent.spawn(self._db.run)
        gevent.spawn(self._housekeeping)
        gevent.spawn(self._cleaner.run)
        while True:
            sock, _ = server.accept()
            if not listener_socket.is_own_user(sock):
                pid, uid = listener_socket.peer(sock)
                log.error("refused a connection from pid %s of uid %s: the worker socket "
                          "serves only relay's own user", pid, uid)
                sock.close()
                continue
            self._peer_numbers += 1
            peer = WorkerPeer(sock, self._peer_numbers)
            self._peers.add(peer)
            gevent.spawn(peer.writer)
            gevent.spawn(self._read_peer, peer)

    def _read_peer(self, peer: WorkerPeer) -> None:
        reader = bus.FrameReader()
        try:
            while not peer.closed:
                data = peer.sock.recv(65536)
                if not data:
                    break
                for kind, body in reader.feed(data):
                    self._handle(peer, kind, body)
        except (bus.BusProtocolError, ValueError, TypeError, OverflowError) as exc:
            # OverflowError: int() of a JSON 1e999 (infinity), e.g. as a HELLO pid.
            log.error("worker %s sent garbage (%s); dropping it", peer.pid, exc)
        except OSError:
            pass
        finally:
            self._forget(peer)

    def _handle(self, peer: WorkerPeer, kind: int, body: bytes) -> None:
        message = bus.decode_json(body)
        if kind == bus.HELLO:
            peer.hello(int(message.get("pid", 0)))
            log.info("worker %s connected", peer.pid)
            if self._revoked:  # before anything it attaches is answered
                peer.send(bus.encode(bus.REVOKED, {"revoked": self._revoked}))
            self._push_stats()  # its /health works at once, and the others count it
        elif kind == bus.ATTACH:
            self._attach(peer, message)
        elif kind == bus.DETACH:
            self._detach(peer, _str(message.get("user")), _str_list(message.get("channels")))
        elif kind == bus.COUNTERS:
            peer.report(message)
        elif kind == bus.STATS:
            peer.send(bus.encode(bus.STATS_REPLY, {**self.stats(), "req": message.get("req")}))
        else:
            raise bus.BusProtocolError(f"kind {kind} is not for the listener")

    def _attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        user = _str(request.get("user"))
        channels = _str_list(request.get("channels"))
        if not user or not channels:
            raise bus.BusProtocolError("attach without user or channels")
        if not all(valid_channel(channel) for channel in channels):
            # A worker only sends channels_for()'s names; an empty one would make every LISTEN
            # a syntax error, and the database link reconnect for ever.
            raise bus.BusProtocolError("attach with an invalid channel name")
        revoked = self._revoked.get(user)
        issued = request.get("iat")
        if revoked is not None and not (isinstance(issued, (int, float)) and issued >= revoked):
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False,
                "code": closecodes.UNAUTHORIZED.code, "reason": "token revoked"}))
            return
        if self._users[user] >= self.settings.max_connections_per_user:
            refusal = closecodes.TOO_MANY_CONNECTIONS
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False, "code": refusal.code,
                "reason": refusal.reason}))
            return
        # Count the connection now, so that the channel is wanted and a concurrent detach
        # of the same user's last other connection does not close it under us.
        peer.attach(user, channels)
        self._users[user] += 1
        self._connections += 1
        for channel in self._refcounts.add(channels):
            self._history.open(channel)
        if self._durable is not None:
            for channel in channels:
                self._durable.open(channel)  # a no-op when open (a lingering one, say)
            # Answered from the link's greenlet, which may ask the database (heads, reads),
            # every waiting attach at once.
            self._pending.append((peer, request))
            self._db.wake()
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
        return not self._per_user or all(ch in self._db.listening for ch in channels)

    def _answer_attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        if peer.closed:
            return
        channels = _str_list(request.get("channels"))
        resume = request.get("resume") if isinstance(request.get("resume"), dict) else {}
        # Half the client's outbound queue at most (see History.resume).
        plan = self._history.resume(
            channels, resume,
            max_bytes=min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2,
            max_messages=self.settings.queue_max_messages // 2, overhead=_WS_HEADER_BYTES)
        if plan.resync and request.get("reattach"):
            # A worker attaching its connections again: they were this listener's
            # predecessor's, whose history died with it.
            plan = Resume(plan.replay, plan.resync, "listener restarted")
        self._send_attached(peer, request, plan, self._history.cursors(channels), self._epoch)

    def _send_attached(self, peer: WorkerPeer, request: dict[str, Any], plan: Resume,
                       cursors: dict[str, str], epoch: str) -> None:
        self._answered = True
        answer: dict[str, Any] = {
            "req": request.get("req"), "ok": True, "epoch": epoch, "cursors": cursors,
            "replay": [message.decode() for message in plan.replay], "resync": list(plan.resync)}
        if plan.reason:
            answer["reason"] = plan.reason
        peer.send(bus.encode(bus.ATTACHED, answer))

    def _answer_waiting(self) -> None:
        """Answer every waiting attach from the durable history: the unknown heads of all of
        them in one ``relay.heads``, what the cache cannot replay in one read per 500
        channels (``relay.read_channel``), every read bounded by the client's budget."""
        durable = self._durable
        assert durable is not None
        waiting = [(peer, request) for peer, request in self._pending if not peer.closed]
        self._pending = []
        if not waiting:
            return
        self._learn(durable.unknown(
            channel for _, request in waiting for channel in _str_list(request.get("channels"))))
        max_messages = self.settings.queue_max_messages // 2
        max_bytes = min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2
        plans = []
        reads: list[tuple[str, int, int]] = []
        for peer, request in waiting:
            channels = _str_list(request.get("channels"))
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

    def _detach(self, peer: WorkerPeer, user: str, channels: list[str]) -> None:
        held = peer.detach(user, channels)
        if held is None:
            return
        release(self._users, user)
        self._connections -= 1
        self._unwant(held)

    def _unwant(self, channels: list[str], count: int = 1) -> None:
        closed = self._refcounts.remove(channels, count)  # only without linger
        self._closed(closed)

    def _closed(self, channels: list[str]) -> None:
        for channel in channels:
            self._history.close(channel)
            if self._durable is not None:
                self._durable.close(channel)
        if channels and self._per_user:
            self._db.wake()  # UNLISTEN them

    def _forget(self, peer: WorkerPeer) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        peer.close()
        self._worker_totals.retire(peer.counters)
        log.info("worker %s disconnected", peer.pid)
        self._pending = [(p, r) for p, r in self._pending if p is not peer]
        for user, count in peer.users.items():
            release(self._users, user, count)
            self._connections -= count
        for channel, count in peer.channels.items():
            self._unwant([channel], count)
        self._push_stats()

    def _housekeeping(self) -> None:
        next_push = 0.0
        while True:
            gevent.sleep(min(STATS_PUSH_SECONDS, max(0.05, self.settings.linger_seconds / 4)))
            self._closed(self._refcounts.expire())
            self._history.expire()
            self._forget_old_revocations()
            if self._durable is not None:
                self._durable.expire()
            if time.monotonic() >= next_push:
                next_push = time.monotonic() + STATS_PUSH_SECONDS
                self._push_stats()

    def _forget_old_revocations(self) -> None:
        """A revocation older than the longest token lifetime voids nothing any more."""
        cap = self.settings.max_token_lifetime
        now = time.time()
        if cap and self._revoked and now - self._revoked_swept > 60:
            self._revoked_swept = now
            horizon = now - cap - 60
            self._revoked = {u: at for u, at in self._revoked.items() if at > horizon}

    def _push_stats(self) -> None:
        """Every worker gets the instance's figures, for its /health and /metrics."""
        if not self._peers:
            return
        frame = bus.encode(bus.STATS_REPLY, self.stats())
        for peer in self._peers:
            peer.send(frame)

    def stats(self) -> dict[str, Any]:
        """The instance's figures, for /health and /metrics (``STATS_REPLY``). Costs what
        there are workers, never what there are users or channels."""
        self._stats_built += 1
        follower = self._follower
        return {
            "database": "connected" if self._db.connected else "disconnected",
            "databaseRefused": self._db.refused,
            "history": "durable" if self._durable is not None else "memory",
            "outboxPosition": follower.last_pos if follower is not None else None,
            "outboxCatchUps": follower.scans if follower is not None else 0,
            "outboxCaughtUp": follower.scanned if follower is not None else 0,
            "outboxHoles": follower.holes if follower is not None else 0,
            "outboxCleaned": self._cleaner.deleted,
            "connectedUsers": len(self._users),
            "totalConnections": self._connections,
            "channels": self._refcounts.open_count,
            "listened": len(self._db.listening),
            "lingering": self._refcounts.lingering,
            "userChannels": "listen" if self._per_user else "off",
            "userChannelsSetting": self.settings.user_channels,
            "notifyChannel": self._shared[-1],
            "relaySql": self._relay_sql.get("version", 0) if self._installed else 0,
            "notifyQueueUsage": self._queue.usage,
            "workers": len(self._peers),
            "epoch": self.epoch,
            "listenerPid": os.getpid(),
            "listenerStartedAt": self.started_at,
            "instanceStartedAt": self.instance_started_at,
            "notifications": self._notifications,
            "notificationsDropped": dict(self._dropped),
            "deliveries": self._deliveries,
            "databaseReconnects": self._db.reconnects,
            "historyBytes": (self._durable or self._history).total_bytes,
            "statsBuilt": self._stats_built,
            "sentAt": time.time(),
            "latency": self._latency.snapshot(),
            **self._worker_totals.sum(peer.counters for peer in self._peers),
        }


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def run_listener(settings: Settings, instance_started_at: float | None = None) -> None:
    """Entry point of the listener process (``python -m relay listen``)."""
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        Listener(settings, instance_started_at).serve_forever()
    except listener_socket.SocketPathError as exc:
        log.error("cannot serve the workers: %s", exc)
        raise SystemExit(1) from None
