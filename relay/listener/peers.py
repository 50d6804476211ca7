"""One connected worker as the listener sees it: its socket, its outbound queue, and what
its connections have attached; and ``WorkerPeers``, the set of them with each channel's route.

The listener's ``Workers`` accepts the worker and reads its frames (``str_field`` and
``str_list`` read their fields). A peer keeps its channels' routes (``WorkerPeers.routes``:
channel → the workers holding it) as its connections attach and detach, so that the
listener's ``Delivery`` finds a message's workers in one lookup, not one per worker (every
instance sees every message). Everything written to the worker goes through ``send``,
drained by one writer greenlet (trap 3) that joins what is queued into one ``sendall`` and,
while busy, lets a millisecond's worth gather first. A worker that stops reading is dropped
rather than queued for without bound: it reconnects, and its clients resync.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.event

from relay.listener.refcounts import release

log = logging.getLogger("relay.listener")

# A worker that does not read for this long (its queue over this many bytes) is dropped;
# it reconnects and its clients resync. Workers are local and normally drain in microseconds.
_QUEUE_LIMIT = 64 << 20
_COALESCE_SECONDS = 0.001


# A channel's route: the one worker holding it (nearly always), or a tuple of them. No
# 1-tuple for each of 200,000 channels: 56 bytes a channel, a third of the listener's
# per-user memory for the counts and routes together (100,000 users on six workers).
Routes = dict[str, "WorkerPeer | tuple[WorkerPeer, ...]"]


class WorkerPeers(set["WorkerPeer"]):
    """The connected workers (``Workers`` alone adds and removes them), and ``routes``: for
    each channel held on any of them, those that hold it (kept by the peers themselves)."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: Routes = {}


class WorkerPeer:
    def __init__(self, sock: socket.socket, number: int, routes: Routes) -> None:
        self.sock = sock
        self.number = number
        self._routes = routes  # its WorkerPeers' routes: this peer is in those of its channels
        self.pid = 0  # told by its HELLO
        self.counters: dict[str, Any] = {}  # its latest COUNTERS snapshot
        self.users: Counter[str] = Counter()  # user → connections on this worker
        self.channels: Counter[str] = Counter()  # channel → connections on this worker
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = gevent.event.Event()
        self.closed = False

    # ----- what the worker told -----

    def hello(self, pid: int) -> None:
        self.pid = pid

    def report(self, counters: dict[str, Any]) -> None:
        self.counters = counters

    def attach(self, user: str, channels: Iterable[str]) -> None:
        """One connection of ``user`` on this worker now holds ``channels``."""
        self.users[user] += 1
        counts, routes = self.channels, self._routes
        for channel in channels:
            held = counts[channel]
            counts[channel] = held + 1
            if not held and not self.closed:
                route = routes.get(channel)
                routes[channel] = (self if route is None else (*route, self)
                                   if type(route) is tuple else (route, self))

    def detach(self, user: str, channels: Iterable[str]) -> list[str] | None:
        """One connection of ``user`` is gone: the channels it held here (``None`` if this
        worker had no connection of that user, which the listener then ignores)."""
        if self.users.get(user, 0) <= 0:
            return None
        release(self.users, user)
        held = [channel for channel in channels if self.channels.get(channel, 0) > 0]
        for channel in held:
            if release(self.channels, channel):
                self._unroute(channel)
        return held

    def _unroute(self, channel: str) -> None:
        route = self._routes.get(channel)
        if route is self:
            del self._routes[channel]
        elif type(route) is tuple and self in route:
            rest = tuple(peer for peer in route if peer is not self)
            self._routes[channel] = rest[0] if len(rest) == 1 else rest

    # ----- writing to it -----

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > _QUEUE_LIMIT:
            log.error("worker %s is not reading; dropping it", self.pid)
            self.close()
            return
        self._wakeup.set()

    def writer(self) -> None:
        """The one greenlet that writes to the worker's socket."""
        last_flush = 0.0
        try:
            while not self.closed:
                self._wakeup.wait()
                if time.monotonic() - last_flush < _COALESCE_SECONDS:
                    # Busy: let a little more gather, so that a flood of small transactions
                    # costs the worker one wake-up per millisecond, not one per transaction.
                    gevent.sleep(_COALESCE_SECONDS)
                self._wakeup.clear()
                last_flush = time.monotonic()
                while self._queue:
                    batch = b"".join(self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                    self._send_all(batch)
        except OSError:
            self.close()

    def _send_all(self, data: bytes) -> None:
        """``sendall`` without gevent's: that asks the kernel for the socket's buffer size
        (a getsockopt) and goes through three layers of Python on every call, once per
        flush. ``send`` waits (greenlet-wise) while the socket is full."""
        sent = self.sock.send(data)
        if sent < len(data):
            view = memoryview(data)
            while sent < len(data):
                sent += self.sock.send(view[sent:])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for channel in self.channels:  # nothing is routed to it any more
                self._unroute(channel)
            self._wakeup.set()
            try:
                self.sock.close()
            except OSError:
                pass


def str_field(value: object) -> str:
    """A string field of a worker's frame (anything else: empty)."""
    return value if isinstance(value, str) else ""


def str_list(value: object) -> list[str]:
    """A list-of-strings field of a worker's frame (its other items dropped)."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]
