"""Who may hold a worker's slots before proving who they are, and how often a user may attach.

One ``Admission`` per worker (the ``Node`` owns it). Two budgets:

- **Pending connections**: a connection is *pending* while its request arrives (behind
  Fly's proxy, which reads requests itself: from its WebSocket request on, the first moment
  the client's address is known) and then until its token verifies or it ends. At most
  ``RELAY_MAX_PENDING_PER_ADDRESS`` per client address (more are refused: HTTP 429), and
  ``RELAY_MAX_PENDING_CONNECTIONS`` in all, always below the worker's connection limit, so
  that unauthenticated sockets can never take the slots of authenticated users. When the
  worker's budget is full, a newcomer *evicts the oldest* pending connection (closed 4010)
  instead of being refused: a horde from many addresses, each socket held for the auth
  timeout, then keeps its sockets only until the budget turns over, while a real client,
  which authenticates within a round trip, gets through. An IPv6 client counts by its /64,
  what one subscriber or machine typically gets: single addresses are free to pick from it.
- **Resumes per user**: a token bucket per user id (``RELAY_RESUME_RATE`` per second, bursts
  of ``RELAY_RESUME_BURST``) for the connections that ask for a replay (up to half a queue
  of messages from the listener's history), so that nobody can demand one many times a
  second. A fresh connection asks for nothing costly and is not counted. A refusal is a
  close 1013 "try again later" whose reason says when; the bundled client backs off on it
  (its backoff is reset only by a connection that stayed up), and resumes when it is back.

The client's address is the peer's, or on Fly.io (``FLY_APP_NAME`` set) the ``Fly-Client-IP``
header its proxy sets: anywhere else anyone could send that header, and choose their count.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import gevent

from relay.config import Settings

_SWEEP_SECONDS = 60.0  # how often full buckets are forgotten
PENDING_KEY = "relay.pending"  # the WSGI environ key of a connection's PendingTicket


def address_key(address: str) -> str:
    """The key an address counts under: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address or "-"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class PendingEvicted(gevent.Timeout):
    """Raised in a pending connection's greenlet when a newcomer takes its place: a timeout
    come early, handled where the auth timeout is (close 4010)."""

    def __init__(self) -> None:
        super().__init__(None)

    def __str__(self) -> str:
        return "evicted: the worker's unauthenticated connections are over budget"


class PendingTicket:
    """One pending connection's place; ``release`` (idempotent) when it authenticates or
    ends. The greenlet that took it serves that connection until it parks to wait for its
    auth message; from then on ``on_evict`` (set by the connection's session, called
    without arguments, must not block) is how it is closed early."""

    __slots__ = ("_admission", "key", "greenlet", "on_evict")

    def __init__(self, admission: Admission, key: str, greenlet: Any) -> None:
        self._admission: Admission | None = admission
        self.key = key
        self.greenlet = greenlet
        self.on_evict: Callable[[], None] | None = None

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self)


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.per_address = settings.pending_per_address_limit
        self.total = settings.pending_connection_limit
        self.rate = settings.resume_rate
        self.burst = float(settings.resume_burst)
        self._tickets: dict[PendingTicket, None] = {}  # oldest first
        self._by_address: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # user → (tokens, at)
        self.evicted = 0
        self._swept = time.monotonic()

    # ----- pending connections -----

    @property
    def pending(self) -> int:
        return len(self._tickets)

    def admit(self, address: str) -> PendingTicket | None:
        """A ticket for a new pending connection from ``address`` (on the current greenlet,
        which serves it), or ``None`` when that address is over its share."""
        key = address_key(address)
        held = self._by_address.get(key, 0)
        if self.per_address and held >= self.per_address:
            return None
        if len(self._tickets) >= self.total:
            self._evict_oldest()
            gevent.sleep(0)  # the evicted connection ends (and frees its slot) first
        self._by_address[key] = self._by_address.get(key, 0) + 1
        ticket = PendingTicket(self, key, gevent.getcurrent())
        self._tickets[ticket] = None
        return ticket

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._tickets))
        oldest.release()
        self.evicted += 1
        if oldest.on_evict is not None:
            oldest.on_evict()
        elif oldest.greenlet is not gevent.getcurrent():
            # Raised where that greenlet waits (its request, or its auth message); it does
            # not wait for the greenlet to end.
            if isinstance(oldest.greenlet, gevent.Greenlet):
                oldest.greenlet.kill(PendingEvicted(), block=False)
            else:
                gevent.kill(oldest.greenlet, PendingEvicted())

    def _release(self, ticket: PendingTicket) -> None:
        del self._tickets[ticket]
        held = self._by_address[ticket.key] - 1
        if held:
            self._by_address[ticket.key] = held
        else:
            del self._by_address[ticket.key]

    def pending_from(self, address: str) -> int:
        return self._by_address.get(address_key(address), 0)

    # ----- resumes per user -----

    def resume_wait(self, user_id: str, now: float | None = None) -> float:
        """0 if ``user_id`` may resume now (and counts it), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        if now - self._swept > _SWEEP_SECONDS:
            self._sweep(now)
        tokens, at = self._buckets.get(user_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[user_id] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[user_id] = (tokens - 1.0, now)
        return 0.0

    def _sweep(self, now: float) -> None:
        """Forget users whose bucket has refilled: they are as new."""
        self._swept = now
        full = self.burst / self.rate
        self._buckets = {user: bucket for user, bucket in self._buckets.items()
                         if now - bucket[1] < full}
