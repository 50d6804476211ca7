"""Which channels the instance wants LISTENed: reference counts over all workers, with linger.

A channel is wanted from its first reference (a connection, on any worker, that attached it)
until ``linger`` seconds after its last one is gone, so that a page reload comes back within
the linger and resumes without loss (``RELAY_LINGER_SECONDS``). The database link LISTENs
what is wanted and UNLISTENs what is not; ``version`` tells it when to look again. Pure
bookkeeping, no I/O: the listener's ``Listener`` owns one, and the unit tests drive it with
their own clock. (encode/broadcaster's refcount, in one object.)
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
        self._lingering: dict[str, float] = {}  # channel → when it stops being wanted
        # Bumped whenever wanted() gains or loses a channel: cheaper to compare than the set.
        self.version = 0

    def add(self, channels: Iterable[str]) -> None:
        """One more connection wants each of ``channels`` (a lingering one is kept on)."""
        for channel in channels:
            if channel not in self._refs and self._lingering.pop(channel, None) is None:
                self.version += 1
            self._refs[channel] += 1

    def remove(self, channels: Iterable[str], count: int = 1) -> None:
        """``count`` connections no longer want each of ``channels``; a channel left with none
        lingers (or, with a linger of 0, is no longer wanted at once)."""
        for channel in channels:
            if not release(self._refs, channel, count):
                continue
            if self._linger > 0:
                self._lingering[channel] = self._clock() + self._linger
            else:
                self.version += 1

    def expire(self) -> list[str]:
        """Stop wanting the channels whose linger is over; returns them."""
        now = self._clock()
        over = [channel for channel, until in self._lingering.items() if until <= now]
        for channel in over:
            del self._lingering[channel]
        if over:
            self.version += 1
        return over

    def wanted(self) -> set[str]:
        return set(self._refs) | set(self._lingering)

    def count(self, channel: str) -> int:
        """Connections over all workers that want ``channel`` now (0 while it lingers)."""
        return self._refs.get(channel, 0)

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
