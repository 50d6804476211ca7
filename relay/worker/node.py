"""A worker's realtime node: the one door its connections use, and the listener link's handler.

``create_app`` builds one ``Node`` per worker process. A ``Connection`` talks to the node
alone: ``register`` when it opens (the node may refuse it: draining, or at capacity),
``attach`` once authenticated, ``detach`` when it is finished, and the counters. The node
owns what connections share: the ``Hub`` of routes, the ``ListenerLink`` (whose handler it
is: it routes a connection at its ``ATTACHED`` answer, hands every update to the hub, and
attaches everything again after a listener restart), one housekeeping greenlet for every
connection's heartbeat and token expiry (not a timer per connection), and on SIGTERM the
drain: clients closed with 1012 spread over ``RELAY_DRAIN_SECONDS`` so that they do not all
reconnect in the same second, before gunicorn's worker exits (trap 8).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from typing import Any, Protocol

import gevent

from relay import closecodes
from relay.closecodes import CloseCode
from relay.config import Settings
from relay.worker.admission import Admission
from relay.worker.hub import Hub, Member
from relay.worker.link import ListenerLink

log = logging.getLogger("relay.node")

# Ticking 5,000 connections in one go held every delivery of the worker for tens of ms once a
# second (bench steady). A slice of 500 ticks takes a millisecond or two.
_TICK_SLICE = 500
# The drain closes its clients in steps this far apart (50 a second), spread over the window.
_DRAIN_STEP = 0.02
# After the window, the drain waits for its clients' answers to their close until this long
# after the window's end, counted from the drain's start and not from its last close: on a
# starved machine the closes fall behind the window, and a wait of 3 s from the last close
# put the exit 15 s after SIGTERM (bench scale, 100,000 clients, drain 10 s). The rest of
# the promised drain + 3 s is for the processes' exits (the worker's, then the master's).
DRAIN_ANSWER_SECONDS = 2.5


def _next_ping(conn: Client) -> float:
    return conn.next_ping


class Client(Member, Protocol):
    """A connection as the node sees it (``relay.worker.connection.Connection``): a member
    of the hub that also keeps its own time and hears the listener's answers."""

    next_ping: float  # monotonic time of its next heartbeat

    def tick(self, now: float, wall: float) -> None: ...

    def close(self, code: CloseCode, detail: str = "") -> None: ...

    def on_attached(self, reply: dict[str, Any], reattach: bool) -> None: ...

    def on_refused(self, code: int, reason: str) -> None: ...

    def on_resync(self, reason: str, cursors: dict[str, str]) -> None: ...

    @property
    def issued_at(self) -> float: ...


# The listener pushes its figures every second (relay.listener.server.STATS_PUSH_SECONDS);
# older than this, /health takes the listener for stuck and says so.
STATS_MAX_AGE = 5.0

# Every node of this process, for the gunicorn worker's drain (relay.worker.process). It must
# find the node even when the app gunicorn loaded is a WSGI middleware around relay's Flask
# app, where neither the app nor its extensions can be seen.
_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


def nodes() -> list[Node]:
    """The nodes of this process (one per worker in production)."""
    return list(_nodes)


class Node:
    def __init__(self, settings: Settings) -> None:
        _nodes.add(self)
        self.settings = settings
        self.admission = Admission(settings)  # pending connections, resumes per user
        self._hub: Hub[Client] = Hub()
        self._link: ListenerLink[Client] = ListenerLink(settings.socket_path, self)
        self.connections: set[Client] = set()  # every open WebSocket, attached or not
        self.counters: Counter[str] = Counter()
        self.closes: Counter[int | str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.draining = False
        self._drained: list[tuple[Client, bool]] = []  # detached, not yet told (drain)
        # Attached to a listener that is gone, with the cursors they reached.
        self._orphans: list[tuple[Client, dict[str, str | None]]] = []
        self._revoked: dict[str, float] = {}  # relay_revoke(): user → epoch seconds

    def start(self) -> None:
        self._link.start()
        gevent.spawn(self._housekeeping)

    # ----- the door for connections -----

    def register(self, conn: Client) -> tuple[CloseCode, str] | None:
        """A new WebSocket: counted from now until ``detach``. Returns the close code and
        reason to refuse it with, if the worker cannot take it."""
        self.connections.add(conn)
        if self.draining:  # accepted in the moment before the worker stopped listening
            return closecodes.SERVICE_RESTART, "server restarting"
        if len(self.connections) > self.settings.worker_connection_limit:
            return closecodes.TRY_AGAIN_LATER, "worker at capacity"
        return None

    def attach(self, conn: Client, resume: dict[str, str]) -> None:
        """Ask the listener for ``conn``'s channels; ``conn.on_attached`` (or ``on_refused``)
        runs on its answer."""
        self._link.attach(conn, resume)

    def detach(self, conn: Client) -> None:
        """``conn`` is finished: no more routes, and the listener stops counting it."""
        self.connections.discard(conn)
        attached = self._hub.remove(conn)
        if self.draining:
            # Told to the listener a step at a time (_release_drained), together: one by one
            # as the clients answered, each woke the listener for its own (80 us of its CPU
            # per client, 3,000 clients over a 10 s drain).
            self._drained.append((conn, attached))
            return
        self._link.release(conn, attached)

    def _release_drained(self) -> None:
        drained, self._drained = self._drained, []
        for conn, attached in drained:
            self._link.release(conn, attached)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def closed_with(self, code: CloseCode) -> None:
        # A client's own code (any of 3000-4999) is echoed but counted as "other": one label
        # value per code would let a client mint thousands of metric series.
        self.closes[code.code if code.code in closecodes.BY_CODE else "other"] += 1

    def count_auth_failure(self, reason: str) -> None:
        self.auth_failures[reason] += 1

    # ----- what the app asks -----

    def instance_stats(self) -> dict[str, Any] | None:
        """The listener's figures for the whole instance, as it last pushed them (at most
        about a second old); ``None`` if it is away or has not reported for
        ``STATS_MAX_AGE``."""
        return self._link.stats(STATS_MAX_AGE)

    def attaches_in_flight(self) -> int:
        return self._link.in_flight()

    def users_here(self) -> int:
        """Distinct users with an attached connection on this worker."""
        return len(self._hub.by_user)

    # ----- the listener link's handler (its reader greenlet, in stream order) -----

    def on_update(self, channel: str, frame: bytes) -> None:
        self._hub.publish(channel, frame)

    def on_attached(self, conn: Client, reply: dict[str, Any], reattach: bool) -> None:
        cursors = reply.get("cursors")
        self._hub.add(conn, cursors if isinstance(cursors, dict) else None)
        conn.on_attached(reply, reattach)

    def on_refused(self, conn: Client, code: int, reason: str) -> None:
        conn.on_refused(code, reason)

    def on_resync(self, reason: str, cursors: dict[str, str], default: str | None) -> None:
        for conn in list(self._hub.attached()):
            if default is None:
                # Only the channels named: a resync of one channel concerns its members only.
                mine = {ch: cursors[ch] for ch in conn.channels if ch in cursors}
                if not mine:
                    continue
            else:
                mine = {ch: cursors.get(ch, default) for ch in conn.channels}
            conn.on_resync(reason, mine)

    def on_lost(self) -> None:
        # No route survives the listener: each connection is attached again once a new
        # listener answers, resuming from where its channels were (a listener in front of
        # the database's durable history replays what it missed; one that keeps its history
        # in memory has none of it, and the client resyncs).
        self._orphans.extend(self._hub.unroute_all())

    def on_revoked(self, revoked: dict[str, float]) -> None:
        """relay_revoke(): close the connections whose token it voids (4001, so that the
        client asks the app for a new token: a signed-out user gets none), and remember it
        for their refreshes."""
        cap = self.settings.max_token_lifetime
        if cap and len(self._revoked) > 1000:  # forget those that void nothing any more
            horizon = time.time() - cap - 60
            self._revoked = {u: at for u, at in self._revoked.items() if at > horizon}
        for user, at in revoked.items():
            self._revoked[user] = max(at, self._revoked.get(user, at))
        for conn in [c for c in self.connections if c.user_id in revoked]:
            if conn.issued_at < revoked[conn.user_id]:
                self.count_auth_failure("token revoked")
                conn.close(closecodes.UNAUTHORIZED, "token revoked")

    def revoked_at(self, user_id: str) -> float | None:
        """When ``user_id``'s tokens were last revoked (epoch seconds), if they were."""
        return self._revoked.get(user_id)

    def on_reconnected(self) -> None:
        orphans, self._orphans = self._orphans, []
        log.warning("reconnected to the listener; re-attaching %d connections",
                    len(self.connections))
        for conn, cursors in orphans:
            if conn in self.connections:  # not finished meanwhile
                self._link.attach(conn, cursors, reattach=True)

    # ----- housekeeping and drain -----

    def _housekeeping(self) -> None:
        tick = max(0.05, min(1.0, self.settings.ping_interval / 4,
                             self.settings.pong_timeout / 4))
        next_push = 0.0
        while True:
            # Slices spread over the period: the ticks, the pings they send and the pongs that
            # come back no longer arrive all at once, ahead of every delivery in the worker.
            conns = tuple(self.connections)
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
                self._link.push_counters(self.snapshot())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Cumulative counters of this worker (sent to the listener about once a second)."""
        counters = dict(self.counters)
        counters["published"] = self._hub.published
        counters["delivered"] = self._hub.delivered
        return {"counters": counters, "closes": {str(k): v for k, v in self.closes.items()},
                "authFailures": dict(self.auth_failures)}

    def drain(self) -> None:
        """Close every client with 1012, spread over the drain window, then return."""
        if self.draining:
            return
        self.draining = True
        # Those due for a ping soonest are closed first: with a window shorter than the ping
        # interval none is pinged during the drain (its ping and pong were, at 100,000
        # clients, some 50,000 exchanges on both sides of a drain that falls behind).
        conns = sorted(self.connections, key=_next_ping)
        window = self.settings.drain_seconds
        log.info("draining %d connections over %.1fs", len(conns), window)
        started = time.monotonic()
        # In steps of _DRAIN_STEP, each closing the connections whose turn has come: a sleep
        # per connection woke the drain 1,700 times a second at 17,000 connections a worker.
        closed = 0
        while closed < len(conns):
            elapsed = time.monotonic() - started
            due = len(conns) if elapsed >= window else int(len(conns) * elapsed / window) + 1
            for conn in conns[closed:due]:
                conn.close(closecodes.SERVICE_RESTART, "server restarting")
            closed = max(closed, due)
            self._release_drained()
            if closed < len(conns):
                gevent.sleep(_DRAIN_STEP)
        # Connections accepted after the snapshot (gunicorn stops listening up to a second
        # after the signal) would otherwise hold the worker until graceful_timeout.
        for conn in list(self.connections):
            conn.close(closecodes.SERVICE_RESTART, "server restarting")
        # Give the last close handshakes a moment; connections end on their own after that
        # (the worker's exit closes their sockets: each has had its close frame).
        deadline = started + window + DRAIN_ANSWER_SECONDS
        while self.connections and time.monotonic() < deadline:
            self._release_drained()
            gevent.sleep(0.05)
        self._release_drained()
        # One line for the drain, not one per client (connection.py logs those at debug).
        log.info("drain finished in %.1fs: %d clients closed with 1012, %d did not answer "
                 "their close in time", time.monotonic() - started, closed,
                 len(self.connections))
