"""The listener's bounded cache of each channel's recent updates, as the client receives them.

Owned by a history (``relay.listener.history.History`` in memory, or
``relay.listener.durable.DurableHistory`` in front of relay's outbox), which records each
update it routes and asks for the updates after a position when a client resumes. Bounded
per channel (count), by age and by total bytes over all channels; nothing else in the
listener looks inside.

Sized for 100,000 users with two channels each, most of them silent: a channel costs
nothing here until it has an entry. Age and byte eviction walk a heap of the channels that
hold entries, oldest first, so neither looks at a silent channel.
"""

from __future__ import annotations

import heapq
import itertools
import time

# One recorded update: (seq, monotonic time, message, tag). A plain tuple of atomic values,
# which CPython's collector stops tracking: as dataclass instances, 100,000 entries made each
# of the listener's full collections take 80 ms in the middle of the bench's steady load.
# ``tag`` is the database's random tag of the message (durable history), 0 in memory.
Entry = tuple[int, float, bytes, int]
SEQ, AT, MESSAGE, TAG = 0, 1, 2, 3


class RecentMessages:
    def __init__(self, max_per_channel: int, ttl: float, max_bytes: int) -> None:
        self.max_per_channel = max_per_channel
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._entries: dict[str, list[Entry]] = {}  # channel → its entries, never empty
        # (time of its oldest entry, tie-break, channel) for every channel with entries; an
        # item may be early (its oldest entry went since) or stale (the channel was dropped):
        # checked when it comes up.
        self._aging: list[tuple[float, int, str]] = []
        self._in_aging: set[str] = set()
        self._ties = itertools.count()

    def entries(self, channel: str) -> list[Entry]:
        """``channel``'s entries, oldest first (the cache's own list: read, never change)."""
        return self._entries.get(channel) or []

    def add(self, channel: str, seq: int, message: bytes, tag: int = 0,
            now: float | None = None, runs: bool = False) -> None:
        """Record ``message``; with ``runs`` the channel holds contiguous runs only: an entry
        that does not follow the last one (``seq - 1``) replaces what the channel held."""
        if self.max_per_channel == 0 or self.max_bytes == 0:
            return
        now = time.monotonic() if now is None else now
        entries = self._entries.get(channel)
        if entries is None:
            entries = self._entries[channel] = []
            if channel not in self._in_aging:
                self._in_aging.add(channel)
                heapq.heappush(self._aging, (now, next(self._ties), channel))
        elif runs and entries[-1][SEQ] != seq - 1:
            # Its heap item may now be early: checked when it comes up.
            self.total_bytes -= sum(len(e[MESSAGE]) for e in entries)
            entries.clear()
        entries.append((seq, now, message, tag))
        self.total_bytes += len(message)
        if len(entries) > self.max_per_channel:
            self.total_bytes -= len(entries.pop(0)[MESSAGE])
        if self.total_bytes > self.max_bytes:
            self._evict_over_budget()

    def drop(self, channel: str) -> None:
        entries = self._entries.pop(channel, None)
        if entries:
            self.total_bytes -= sum(len(e[MESSAGE]) for e in entries)

    def _evict_over_budget(self) -> None:
        # Over the memory cap: the oldest entry goes first, over all channels (equal times:
        # each channel in turn).
        while self.total_bytes > self.max_bytes and self._aging:
            _, _, channel = heapq.heappop(self._aging)
            entries = self._entries.get(channel)
            if entries:
                self.total_bytes -= len(entries.pop(0)[MESSAGE])
            self._requeue(channel)

    def expire(self, now: float | None = None) -> None:
        """Drop the entries older than the TTL; costs what it drops, not what is held."""
        now = time.monotonic() if now is None else now
        limit = now - self.ttl
        while self._aging and self._aging[0][0] < limit:
            _, _, channel = heapq.heappop(self._aging)
            entries = self._entries.get(channel)
            while entries and entries[0][AT] < limit:
                self.total_bytes -= len(entries.pop(0)[MESSAGE])
            self._requeue(channel)

    def _requeue(self, channel: str) -> None:
        """``channel``'s heap item was taken: put it back at its oldest entry, if any is left."""
        entries = self._entries.get(channel)
        if entries:
            heapq.heappush(self._aging, (entries[0][AT], next(self._ties), channel))
            return
        self._in_aging.discard(channel)
        if entries is not None:
            del self._entries[channel]
