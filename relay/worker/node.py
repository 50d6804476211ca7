"""A worker's realtime node: the hub, the listener link, housekeeping and drain.

``create_app`` builds one ``Node`` per worker process. It owns the worker-wide pieces that
connections share, runs one housekeeping greenlet for every connection's heartbeat and
token expiry (not a timer per connection), and on SIGTERM drains: closes its clients with
1012 spread over ``RELAY_DRAIN_SECONDS`` so that they do not all reconnect in the same
second, then lets gunicorn's worker exit (trap 8).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter

import gevent

from relay import closecodes
from relay.closecodes import CloseCode
from relay.config import Settings
from relay.worker.hub import Hub
from relay.worker.link import ListenerLink

log = logging.getLogger("relay.node")

# Ticking 5,000 connections in one go held every delivery of the worker for tens of ms once a
# second (bench steady). A slice of 500 ticks takes a millisecond or two.
_TICK_SLICE = 500


# Every node of this process, for the worker's drain: it must find the node even when the
# app gunicorn loaded is a middleware around relay's Flask app.
_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


def nodes() -> list[Node]:
    """The nodes of this process (one per worker in production)."""
    return list(_nodes)


class Node:
    def __init__(self, settings: Settings) -> None:
        _nodes.add(self)
        self.settings = settings
        self.hub = Hub()
        self.link = ListenerLink(settings.socket_path, self.hub)
        self.counters: Counter[str] = Counter()
        self.closes: Counter[int | str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.draining = False
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        self.link.start()
        self._greenlets.append(gevent.spawn(self._housekeeping))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def closed_with(self, code: CloseCode) -> None:
        # A client's own code (any of 3000-4999) is echoed but counted as "other": one label
        # value per code would let a client mint thousands of metric series.
        self.closes[code.code if code.code in closecodes.BY_CODE else "other"] += 1

    def count_auth_failure(self, reason: str) -> None:
        self.auth_failures[reason] += 1

    def _housekeeping(self) -> None:
        tick = max(0.05, min(1.0, self.settings.ping_interval / 4,
                             self.settings.pong_timeout / 4))
        next_push = 0.0
        while True:
            # Slices spread over the period: the ticks, the pings they send and the pongs that
            # come back no longer arrive all at once, ahead of every delivery in the worker.
            conns = tuple(self.hub.connections)
            slices = max(1, -(-len(conns) // _TICK_SLICE))
            for index in range(slices):
                gevent.sleep(tick / slices)
                now = time.monotonic()
                wall = time.time()
                for conn in conns[index * _TICK_SLICE:(index + 1) * _TICK_SLICE]:
                    try:
                        conn.tick(now, wall)
                    except Exception:
                        # One connection's bug must not end the worker's only housekeeping
                        # (no more pings nor token expiry for anyone): close that one.
                        log.exception("housekeeping of user %s failed", conn.user_id or "-")
                        conn.close(closecodes.INTERNAL_ERROR)
            if now >= next_push:
                next_push = now + 1.0
                self.link.push_counters(self.snapshot())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Cumulative counters of this worker (sent to the listener about once a second)."""
        counters = dict(self.counters)
        counters["published"] = self.hub.published
        counters["delivered"] = self.hub.delivered
        return {"counters": counters, "closes": {str(k): v for k, v in self.closes.items()},
                "authFailures": dict(self.auth_failures)}

    def drain(self) -> None:
        """Close every client with 1012, spread over the drain window, then return."""
        if self.draining:
            return
        self.draining = True
        conns = list(self.hub.connections)
        window = self.settings.drain_seconds
        log.info("draining %d connections over %.1fs", len(conns), window)
        started = time.monotonic()
        for index, conn in enumerate(conns):
            due = started + window * index / max(1, len(conns))
            delay = due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            conn.close(closecodes.SERVICE_RESTART, "server restarting")
        # Connections accepted after the snapshot (gunicorn stops listening up to a second
        # after the signal) would otherwise hold the worker until graceful_timeout.
        for conn in list(self.hub.connections):
            conn.close(closecodes.SERVICE_RESTART, "server restarting")
        # Give the last close handshakes a moment; connections end on their own after that.
        deadline = time.monotonic() + 3.0
        while self.hub.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        log.info("drain finished in %.1fs", time.monotonic() - started)
