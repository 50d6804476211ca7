"""How late each relay worker's event loop runs, measured from inside the worker.

Loaded into every gunicorn worker by bench/gunicorn_probe.conf.py when ``bench.servers``
starts relay with a probe directory (the scale scenario does). One greenlet sleeps
``INTERVAL`` again and again and notes how late it woke: that lateness is how long the loop
was held by something else (a slice of housekeeping, a drain, a flood of handshakes, a
garbage collection), which every delivery and every ping of the worker waited for too. Then
it yields once more (``sleep(0)``: to the back of the queue of ready greenlets) and notes how
long that took: gevent runs timers and socket wake-ups first, so an overloaded worker keeps
its timers nearly on time while the greenlets it spawned (a parked connection's read of a
pong, a handshake) queue for seconds - the second figure is that wait. A ``gc.callbacks``
hook times the collector's full (generation 2) collections, the usual suspect for long
pauses in a process holding many objects. Once a second it appends one line to
``<directory>/<pid>.lag``: ``<window start> <window end> <worst lateness ms> <longest full
collection ms> <full collections> <worst ready-queue wait ms>`` (epoch seconds), which
``worst_lag`` reads back for any stretch of a run.

The probe wakes 100 times a second per worker: a few µs each, far under what it measures.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

INTERVAL = 0.01


def start(directory: str) -> None:
    """Spawn the probe greenlet in this (gevent) process."""
    import gevent

    gevent.spawn(_probe, Path(directory) / f"{os.getpid()}.lag")
    gevent.spawn(_census, Path(directory) / f"{os.getpid()}.gc")


GC_CENSUS_SECONDS = 10.0


def _census(path: Path) -> None:
    """Every ``GC_CENSUS_SECONDS``: ``<time> <objects the collector tracks> <connections>``
    (the objects of every generation, not those frozen at boot), whose ratio is what each
    held connection adds to a full collection's walk. Counting them walks them all once
    (a few ms at 20,000 connections): every 10 s, not every window."""
    import gevent

    from relay.worker.node import nodes

    with path.open("a", buffering=1) as out:
        while True:
            gevent.sleep(GC_CENSUS_SECONDS)
            tracked = len(gc.get_objects())
            connections = sum(len(node.connections) for node in nodes())
            out.write(f"{time.time():.3f} {tracked} {connections}\n")


def census(directory: Path, since: float, until: float) -> dict[str, Any]:
    """The last census of each worker in [since, until] (``_census``): tracked objects and
    connections summed over the workers, and their ratio (what an empty worker tracks, a
    few thousand objects, included)."""
    tracked = connections = 0
    for path in sorted(directory.glob("*.gc")):
        last = None
        for line in path.read_text().splitlines():
            fields = line.split()
            try:
                at, objects, conns = float(fields[0]), int(fields[1]), int(fields[2])
            except (ValueError, IndexError):
                continue
            if since <= at <= until:
                last = (objects, conns)
        if last is not None:
            tracked += last[0]
            connections += last[1]
    return {"trackedObjects": tracked, "connections": connections,
            "objectsPerConnection": round(tracked / connections, 1) if connections else None}


class _Collections:
    """The longest full collection and how many ran, since the last window."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.count = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self.started)
            self.count += 1


def _probe(path: Path) -> None:
    import gevent

    collections = _Collections()
    gc.callbacks.append(collections)
    with path.open("a", buffering=1) as out:
        window = time.time()
        worst = queued = 0.0
        while True:
            before = time.perf_counter()
            gevent.sleep(INTERVAL)
            woke = time.perf_counter()
            gevent.sleep(0)
            worst = max(worst, woke - before - INTERVAL)
            queued = max(queued, time.perf_counter() - woke)
            now = time.time()
            if now - window >= 1.0:
                out.write(f"{window:.3f} {now:.3f} {worst * 1000:.2f} "
                          f"{collections.longest * 1000:.2f} {collections.count} "
                          f"{queued * 1000:.2f}\n")
                window, worst, queued = now, 0.0, 0.0
                collections.longest, collections.count = 0.0, 0


def worst_lag(directory: Path, since: float, until: float) -> dict[str, Any]:
    """The worst lateness (ms) of any worker in the windows that overlap [since, until], in
    how many windows it was over 100 ms and over 500 ms, the longest full collection, the
    longest wait of a ready greenlet, and each window over 50 ms as (seconds after ``since``,
    worker pid, lateness ms, its longest full collection ms, its ready-queue wait ms)."""
    worst = worst_gc = worst_queue = 0.0
    over_100 = over_500 = windows = full_collections = 0
    spikes: list[tuple[float, int, float, float]] = []
    for path in sorted(directory.glob("*.lag")):
        pid = int(path.stem) if path.stem.isdigit() else 0
        for line in path.read_text().splitlines():
            fields = line.split()
            try:
                start_t, end_t, lag = float(fields[0]), float(fields[1]), float(fields[2])
                gc_ms, gc_count = float(fields[3]), int(fields[4])
                queue_ms = float(fields[5]) if len(fields) > 5 else 0.0
            except (ValueError, IndexError):
                continue  # a line being written
            if end_t < since or start_t > until:
                continue
            windows += 1
            worst = max(worst, lag)
            worst_gc = max(worst_gc, gc_ms)
            worst_queue = max(worst_queue, queue_ms)
            full_collections += gc_count
            over_100 += lag > 100
            over_500 += lag > 500
            if lag > 50 or queue_ms > 50:
                spikes.append((round(end_t - since, 1), pid, lag, gc_ms, queue_ms))
    return {"worstMs": worst, "windows": windows, "windowsOver100Ms": over_100,
            "windowsOver500Ms": over_500, "worstFullCollectionMs": worst_gc,
            "worstReadyWaitMs": worst_queue,
            "fullCollections": full_collections, "spikes": sorted(spikes)}
