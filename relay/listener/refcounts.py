"""Which channels the instance wants: reference counts over all workers, with linger.

A channel is wanted from its first reference (a connection, on any worker, that attached it)
until ``linger`` seconds after its last one is gone, so that a page reload comes back within
the linger and resumes without loss (``RELAY_LINGER_SECONDS``). A wanted channel is *open*:
the listener numbers and delivers its notifications, and keeps its history; anything for a
channel nobody wants is dropped. With per-user LISTEN, the database link also LISTENs what
is wanted and UNLISTENs what is not: it asks for the channels that changed since it last
looked (``take_changes``), never for the whole set except after a (re)connect.

Every verb costs what it touches, not what is held: at 100,000 users an attach, a detach and
the linger's expiry must not walk 200,000 channels. Pure bookkeeping, no I/O: the listener's
``Listener`` makes one, shared by ``Subscriptions`` (which counts) and ``Router`` (which
LISTENs), and the unit tests drive it with their own clock. (encode/broadcaster's
refcount, in one object.)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable


class ChannelRefcounts:
    def __init__(self, linger: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._linger = linger
        self._clock = clock
        self._refs: Counter[str] = Counter()  # channel → connections over all workers
        # channel → when it stops being wanted. The linger is one constant and the clock only
        # moves forward, so insertion order is expiry order: expire() stops at the first
        # channel still lingering.
        self._lingering: dict[str, float] = {}
        self._changed: set[str] | None = None  # channels that opened or closed; None: untracked
        # Bumped whenever a channel opens or closes: cheaper to compare than any set.
        self.version = 0

    def add(self, channels: Iterable[str]) -> list[str]:
        """One more connection wants each of ``channels``; returns those that open now (a
        lingering one is kept on, it does not open again)."""
        opened = []
        for channel in channels:
            if channel not in self._refs and self._lingering.pop(channel, None) is None:
                opened.append(channel)
            self._refs[channel] += 1
        if opened:
            self._note(opened)
        return opened

    def remove(self, channels: Iterable[str], count: int = 1) -> list[str]:
        """``count`` connections no longer want each of ``channels``. A channel left with none
        lingers; with a linger of 0 it closes at once: returns the channels that closed."""
        closed = []
        for channel in channels:
            if not release(self._refs, channel, count):
                continue
            if self._linger > 0:
                self._lingering[channel] = self._clock() + self._linger
            else:
                closed.append(channel)
        if closed:
            self._note(closed)
        return closed

    def expire(self) -> list[str]:
        """Close the channels whose linger is over; returns them."""
        now = self._clock()
        over = []
        for channel, until in self._lingering.items():
            if until > now:
                break
            over.append(channel)
        for channel in over:
            del self._lingering[channel]
        if over:
            self._note(over)
        return over

    def _note(self, channels: list[str]) -> None:
        self.version += 1
        if self._changed is not None:
            self._changed.update(channels)

    def track_changes(self, on: bool) -> None:
        """Start (or stop) remembering which channels open and close, for ``take_changes``:
        only per-user LISTEN needs them, and untracked they cost nothing."""
        self._changed = set() if on else None

    def take_changes(self) -> set[str]:
        """The channels that opened or closed since the last call (each may have done both)."""
        changed = self._changed or set()
        if self._changed is not None:
            self._changed = set()
        return changed

    def is_open(self, channel: str) -> bool:
        """Whether ``channel`` is wanted now (referenced, or lingering)."""
        return channel in self._refs or channel in self._lingering

    def wanted(self) -> set[str]:
        """Every open channel (a copy: for a (re)connect's full LISTEN, not for each change)."""
        return set(self._refs) | set(self._lingering)

    def count(self, channel: str) -> int:
        """Connections over all workers that want ``channel`` now (0 while it lingers)."""
        return self._refs.get(channel, 0)

    @property
    def open_count(self) -> int:
        return len(self._refs) + len(self._lingering)

    @property
    def lingering(self) -> int:
        return len(self._lingering)


def release(counts: Counter[str], key: str, count: int = 1) -> bool:
    """Take ``count`` off ``key`` (never below zero); ``True`` when that was the last of it:
    the key is then gone from ``counts``, so that ``len`` and iteration see live keys only."""
    held = counts.get(key, 0)
    if held <= 0:
        return False
    if held > count:
        counts[key] = held - count
        return False
    del counts[key]
    return True
