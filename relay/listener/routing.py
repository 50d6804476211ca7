"""The database link's handler: what to LISTEN, what the database says, where each
notification goes.

``Router`` owns the listener's ``DatabaseLink`` and is its ``DatabaseHandler``; it builds the
``Delivery`` (the histories and the way out to the workers) and the ``Subscriptions`` (the
attaches and their answers), and hands each what concerns it. The ``Listener`` wires it to
the ``Workers``.

Notifications come two ways. relay's own SQL publishes every message on one shared channel
(``RELAY_NOTIFY_CHANNEL``, always LISTENed) with the logical channel in a fixed header
(``relay.listener.frames``): a message for a channel nobody here wants is dropped after a
dict lookup, so the database's cost does not grow with the users. An app's own triggers may
``pg_notify`` each user's channel: those are heard only with per-user LISTEN, which
``RELAY_USER_CHANNELS`` turns on (``listen``), off (``off``), or on while the database has
none of relay's SQL (``auto``, switching when ``db install`` announces itself). A channel fed
both ways is one stream: every notification, whichever way it came, is the next ``seq`` of
its channel, in the order PostgreSQL delivers them (commit order); nothing is deduplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import gevent

from relay.config import Settings
from relay.listener import frames
from relay.listener.database import DatabaseLink
from relay.listener.delivery import Delivery
from relay.listener.handler import Notification
from relay.listener.outbox import Outbox
from relay.listener.peers import WorkerPeers
from relay.listener.queries import DatabaseInfo
from relay.listener.refcounts import ChannelRefcounts
from relay.listener.stats import QueueGauge
from relay.listener.subscriptions import Subscriptions

log = logging.getLogger("relay.listener")

# PostgreSQL before 19 scans a session's LISTENed channels for every notification (trap 11).
MANY_CHANNELS = 10_000
_FIXED_LISTEN = 190000  # server_version_num of PostgreSQL 19, whose LISTEN uses hash tables
# Above this NOTIFY queue usage relay's writers stop sending a frame per message (design §3):
# the listener reads the outbox this often instead, until the queue drains.
_QUEUE_PRESSURE = 0.5
_PRESSURE_POLL_SECONDS = 0.1


class Router:
    def __init__(self, settings: Settings, refcounts: ChannelRefcounts,
                 peers: WorkerPeers, revoke: Callable[[dict[str, float]], None],
                 push_stats: Callable[[], None]) -> None:
        self.settings = settings
        self._refcounts = refcounts
        self._revoke = revoke  # the workers check attaches against it and close connections
        self._push_stats = push_stats
        self._db = DatabaseLink(settings, self)
        self._outbox = Outbox(self._db.query)
        self._delivery = Delivery(settings, refcounts, peers, self._outbox, push_stats)
        self._subscriptions = Subscriptions(settings, refcounts, self._delivery, self._outbox,
                                            self._db, lambda: self._per_user)
        self._catch_up_due = False
        self._pressure = False  # the NOTIFY queue is over half full: poll the outbox
        self._sessions = 0  # database connections made so far
        self._session_started = False  # on_database not yet called on this connection
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
        self._queue = QueueGauge()

    @property
    def database(self) -> DatabaseLink:
        return self._db

    @property
    def delivery(self) -> Delivery:
        return self._delivery

    @property
    def subscriptions(self) -> Subscriptions:
        return self._subscriptions

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

    def _follow(self, hello: dict[str, Any], session_start: bool) -> None:
        reconnected = session_start and self._sessions > 1
        self._delivery.follow(hello, session_start, reconnected, self._per_user)

    def on_checked(self, queue_usage: float, installed: bool) -> None:
        change = self._queue.observe(queue_usage)
        if change == "warn":
            log.warning("PostgreSQL's NOTIFY queue is %.0f%% full: when it is full, every "
                        "transaction that notifies fails at commit (a session that LISTENs "
                        "and stays in a transaction holds it; see pg_stat_activity)",
                        queue_usage * 100)
        elif change == "clear":
            log.info("PostgreSQL's NOTIFY queue is back to %.0f%% full", queue_usage * 100)
        pressure = queue_usage >= _QUEUE_PRESSURE and self._delivery.follower is not None
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
            if (follower := self._delivery.follower) is not None:
                follower.catch_up()
        self._subscriptions.on_idle()

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
        self._subscriptions.on_synced()
        self._delivery.resync_if_due()
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

    def on_notifications(self, notes: Sequence[Notification]) -> None:
        """What arrived together, in order. A numbered frame for the outbox's follower (nearly
        every message) goes straight to it; anything else through ``on_notification``. The
        state is read again for each note: any frame may change it (an epoch, a setting)."""
        delivery = self._delivery
        numbered, tag_value = frames.numbered, frames.tag_value
        for note in notes:
            payload = note.payload
            follower = delivery.follower
            if (follower is not None and note.channel in self._shared
                    and (fields := numbered(payload)) is not None):
                pos, seq, tag_text, channel, body = fields
                tag = tag_value(tag_text)
                if tag is not None and channel:
                    follower.on_message(pos, channel, seq, tag, body)
                    continue
            self.on_notification(note.channel, payload)

    def on_notification(self, channel: str, payload: str) -> None:
        delivery = self._delivery
        if channel not in self._shared:
            if self._per_user:
                delivery.deliver(channel, payload)  # per-user LISTEN: an app's own pg_notify
            else:
                # Per-user LISTEN was just turned off (`auto` heard `db install`) and its
                # UNLISTEN is not done yet: committed after the switch, so unheard, as in `off`.
                # Numbered in memory it would give the client a cursor of the old history.
                delivery.drop("unlistened")
            return
        frame = frames.parse(payload)
        if frame is None:
            # Another program's NOTIFY on relay's channel, or a forgery without the shape.
            delivery.drop("foreign")
            self._warn_once("foreign", "a notification on relay's channel %r is not relay's "
                            "(no r1 header); dropped (counted as foreign)", channel)
        elif frame.kind in (frames.NUMBERED, frames.ROW):
            tag = frames.tag_value(frame.tag)
            body = frame.body if frame.kind == frames.NUMBERED else None
            if tag is None or not frame.channel:
                delivery.drop("foreign")  # not what relay's SQL writes
            elif (follower := delivery.follower) is not None:
                follower.on_message(frame.pos, frame.channel, frame.seq, tag, body)
            elif body is not None:
                delivery.deliver(frame.channel, body)  # outbox news not heard yet: in memory
            elif (row := self._outbox.row(frame.pos)) is not None:
                delivery.deliver(row.channel, row.payload)
        elif frame.kind == frames.MESSAGE:
            if delivery.durable is not None:
                delivery.unnumbered(frame.channel)
            else:
                delivery.deliver(frame.channel, frame.body)
        elif frame.kind == frames.SYNC:
            if (follower := delivery.follower) is not None:
                follower.catch_up()
        elif frame.kind in (frames.EPOCH, frames.INSTALLED, frames.SETTING):
            # Re-read relay.hello(2) now, in order with the frames around it: `auto` switches
            # on an install, the outbox may have come on or gone off, a new epoch resyncs.
            if frame.kind == frames.SETTING and frame.body == "outbox":
                self._delivery.outbox_frame(frame.pos)
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
                delivery.drop("bad revocation")
        elif (follower := delivery.follower) is not None:
            # A kind of a newer SQL: the outbox is the truth (design §3).
            follower.catch_up()
        else:
            delivery.drop("unknown kind")
            self._warn_once(f"kind:{frame.kind}", "relay's SQL sent kind %r, which this relay "
                            "does not speak; dropped: upgrade relay", frame.kind)

    def on_disconnected(self) -> None:
        self._push_stats()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def figures(self) -> dict[str, Any]:
        """Its part of the instance's figures (``Listener.stats``)."""
        return {
            "database": "connected" if self._db.connected else "disconnected",
            "databaseRefused": self._db.refused,
            "listened": len(self._db.listening),
            "userChannels": "listen" if self._per_user else "off",
            "userChannelsSetting": self.settings.user_channels,
            "notifyChannel": self._shared[-1],
            "relaySql": self._relay_sql.get("version", 0) if self._installed else 0,
            "notifyQueueUsage": self._queue.usage,
            "databaseReconnects": self._db.reconnects,
        }
