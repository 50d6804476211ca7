"""The listener process: the instance's one PostgreSQL connection, fanned out to its workers.

Started (and restarted) by ``relay.supervisor`` as ``python -m relay listen``; never by
hand. ``Listener`` is the process's coordinator, and small: it builds the two sides and wires
them, then runs the process's greenlets in order.

- The database side, ``Router`` (``relay.listener.routing``): the ``DatabaseLink`` and its
  handler; ``Delivery`` numbers each notification (the outbox's numbers or memory's) and
  sends the client ``update``, encoded once, to each worker with a subscriber;
  ``Subscriptions`` counts what the workers' connections want (``ChannelRefcounts``) and
  answers each attach once its channels are heard, with a replay or a resync.
- The workers' side, ``Workers`` (``relay.listener.workers``): the Unix socket, one
  ``WorkerPeer`` each, their frames, the per-user limit and the revocations.

Both sides share the set of connected workers (``Workers`` alone changes it; ``Delivery``
fans out over it) and the ``ChannelRefcounts``; everything else one side needs of the other
goes through a callback (``revoke``, ``push_stats``, ``stats``) or the ``Wants`` protocol.
The ``Listener`` itself keeps the housekeeping (linger, history expiry, old revocations)
and the instance's figures, pushed to every worker each second for ``/health`` and
``/metrics``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import gevent
import psycopg2.extensions
import psycopg2.extras

from relay import bus, listener_socket
from relay.collector import Collector
from relay.config import Settings
from relay.listener.cleanup import OutboxCleaner
from relay.listener.peers import WorkerPeers
from relay.listener.refcounts import ChannelRefcounts
from relay.listener.routing import Router
from relay.listener.workers import Workers

log = logging.getLogger("relay.listener")

# Workers serve /health and /metrics from the figures the listener pushes this often, so that
# a flood of either costs the listener nothing per request (issue 14, item 7).
STATS_PUSH_SECONDS = 1.0


class Listener:
    def __init__(self, settings: Settings, instance_started_at: float | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.instance_started_at = instance_started_at or self.started_at
        self._peers = WorkerPeers()
        self._refcounts = ChannelRefcounts(settings.linger_seconds)
        self._router = Router(settings, self._refcounts, self._peers,
                              revoke=lambda revoked: self._workers.revoke(revoked),
                              push_stats=self._push_stats)
        self._delivery = self._router.delivery
        self._subscriptions = self._router.subscriptions
        self._db = self._router.database
        self._workers = Workers(settings, self._peers, self._subscriptions, self.stats,
                                self._push_stats)
        self._cleaner = OutboxCleaner(settings, lambda: self._delivery.follower is not None)
        self._stats_built = 0

    def serve_forever(self) -> None:
        server = self._workers.bind()
        log.info("listener ready on %s", self.settings.socket_path)
        gevent.spawn(self._db.run)
        gevent.spawn(self._housekeeping)
        gevent.spawn(self._cleaner.run)
        self._workers.accept_forever(server)

    def _housekeeping(self) -> None:
        next_push = 0.0
        while True:
            gevent.sleep(min(STATS_PUSH_SECONDS, max(0.05, self.settings.linger_seconds / 4)))
            self._subscriptions.expire()
            self._delivery.expire()
            self._workers.forget_old_revocations()
            if time.monotonic() >= next_push:
                next_push = time.monotonic() + STATS_PUSH_SECONDS
                self._push_stats()

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
        database = self._router.figures()
        delivery = self._delivery.figures()
        workers = self._workers.figures()
        return {
            "database": database["database"],
            "databaseRefused": database["databaseRefused"],
            "history": delivery["history"],
            "outboxPosition": delivery["outboxPosition"],
            "outboxCatchUps": delivery["outboxCatchUps"],
            "outboxCaughtUp": delivery["outboxCaughtUp"],
            "outboxHoles": delivery["outboxHoles"],
            "outboxCleaned": self._cleaner.deleted,
            "connectedUsers": workers.pop("connectedUsers"),
            "totalConnections": workers.pop("totalConnections"),
            "channels": self._refcounts.open_count,
            "listened": database["listened"],
            "lingering": self._refcounts.lingering,
            "userChannels": database["userChannels"],
            "userChannelsSetting": database["userChannelsSetting"],
            "notifyChannel": database["notifyChannel"],
            "relaySql": database["relaySql"],
            "notifyQueueUsage": database["notifyQueueUsage"],
            "workers": workers.pop("workers"),
            "epoch": delivery["epoch"],
            "listenerPid": os.getpid(),
            "listenerStartedAt": self.started_at,
            "instanceStartedAt": self.instance_started_at,
            "notifications": delivery["notifications"],
            "notificationsDropped": delivery["notificationsDropped"],
            "deliveries": delivery["deliveries"],
            "databaseReconnects": database["databaseReconnects"],
            "historyBytes": delivery["historyBytes"],
            "statsBuilt": self._stats_built,
            "sentAt": time.time(),
            "latency": delivery["latency"],
            **workers,  # the workers' summed counters
        }


def run_listener(settings: Settings, instance_started_at: float | None = None) -> None:
    """Entry point of the listener process (``python -m relay listen``)."""
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        listener = Listener(settings, instance_started_at)
        # A full collection holds every delivery while it walks the listener's heap: at
        # 100,000 held users one took 75 ms in the steady phase (a 79 ms client tail), and
        # 250-300 ms while attaches were queued. Freezing each one's survivors leaves the
        # next to walk only what came since (relay.collector, the workers' schedule too).
        Collector().install()
        listener.serve_forever()
    except listener_socket.SocketPathError as exc:
        log.error("cannot serve the workers: %s", exc)
        raise SystemExit(1) from None
