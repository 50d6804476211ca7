"""The listener's instance-wide figures: commit→listener latency, and the workers' counters.

Workers push their cumulative counters about once a second (``COUNTERS``); the listener sums
them, keeping those of workers that went away so that instance totals never go backwards,
and answers ``STATS`` with the sum, its own figures and the latency histogram (rendered by a
worker's ``/metrics``, ``relay.worker.metrics``).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   float("inf"))
# The counter groups of a worker's COUNTERS snapshot (relay.worker.node.Node.snapshot).
COUNTER_GROUPS = ("counters", "closes", "authFailures")


class LatencyHistogram:
    """Commit → listener latency of notifications whose payload carries ``"ts"`` (the bundled
    trigger's commit time, in seconds since the epoch): counts per upper bound, for /metrics.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, stamp: object) -> None:
        """One notification whose payload's ``"ts"`` was ``stamp`` (``protocol``'s
        ``encode_update_stamped`` reads it): a number of seconds since the epoch is counted,
        anything else (absent, a string, a boolean) is not."""
        kind = type(stamp)
        if kind is not float and kind is not int:
            return
        try:
            latency = self._clock() - stamp  # type: ignore[operator]  # a float or an int
        except OverflowError:  # an integer past a float's range (the standard library's parse)
            return
        if latency > 3600:
            return
        if latency < 0.0:
            latency = 0.0
        self.count += 1
        self.sum += latency
        # One bucket per observation (made cumulative in snapshot()): the loop over every
        # bucket was 5% of the listener's CPU at 22,000 notifications/s (bench steady). The
        # last bound is +Inf, so every finite latency has a bucket.
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1

    def snapshot(self) -> dict[str, Any]:
        """Prometheus-style: cumulative counts per upper bound, the count and the sum."""
        return {"buckets": list(zip(LATENCY_BUCKETS, itertools.accumulate(self._buckets),
                                    strict=True)),
                "count": self.count, "sum": self.sum}


class WorkerTotals:
    """The workers' counters summed over the instance, never going backwards."""

    def __init__(self) -> None:
        # Counters of workers that went away.
        self._retired: dict[str, Counter[str]] = {group: Counter() for group in COUNTER_GROUPS}

    def retire(self, snapshot: dict[str, Any]) -> None:
        """A worker went away: keep its last snapshot in the totals."""
        for group, retired in self._retired.items():
            retired.update(snapshot.get(group) or {})

    def sum(self, live: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """The retired workers' counters plus the latest snapshot of each live one."""
        totals = {group: Counter(retired) for group, retired in self._retired.items()}
        for snapshot in live:
            for group, total in totals.items():
                for name, value in (snapshot.get(group) or {}).items():
                    if isinstance(value, int):
                        total[name] += value
        return {group: dict(total) for group, total in totals.items()}


class QueueGauge:
    """``pg_notification_queue_usage()``, sampled on the database link's periodic check, with
    a warning when it crosses half full (and a note when it is back under 40 %): when the
    queue is full, every transaction that notifies fails at its commit."""

    WARN_AT = 0.5
    CLEAR_AT = 0.4

    def __init__(self) -> None:
        self.usage = 0.0
        self._high = False

    def observe(self, usage: float) -> str | None:
        """Record a sample; ``"warn"`` when it just crossed ``WARN_AT``, ``"clear"`` when it
        just fell under ``CLEAR_AT``, else ``None``."""
        self.usage = usage
        if not self._high and usage >= self.WARN_AT:
            self._high = True
            return "warn"
        if self._high and usage < self.CLEAR_AT:
            self._high = False
            return "clear"
        return None
