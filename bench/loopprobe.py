"""How late each relay worker's event loop runs, measured from inside the worker.

Loaded into every gunicorn worker by bench/gunicorn_probe.conf.py when ``bench.servers``
starts relay with a probe directory (the scale scenario does). One greenlet sleeps
``INTERVAL`` again and again and notes how late it woke: that lateness is how long the loop
was held by something else (a slice of housekeeping, a drain, a flood of handshakes), which
every delivery and every ping of the worker waited for too. Once a second it appends one
line to ``<directory>/<pid>.lag``: ``<window start> <window end> <worst lateness ms>``
(epoch seconds), which ``worst_lag`` reads back for any stretch of a run.

The probe wakes 100 times a second per worker: a few µs each, far under what it measures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

INTERVAL = 0.01


def start(directory: str) -> None:
    """Spawn the probe greenlet in this (gevent) process."""
    import gevent

    gevent.spawn(_probe, Path(directory) / f"{os.getpid()}.lag")


def _probe(path: Path) -> None:
    import gevent

    with path.open("a", buffering=1) as out:
        window = time.time()
        worst = 0.0
        while True:
            before = time.perf_counter()
            gevent.sleep(INTERVAL)
            worst = max(worst, time.perf_counter() - before - INTERVAL)
            now = time.time()
            if now - window >= 1.0:
                out.write(f"{window:.3f} {now:.3f} {worst * 1000:.2f}\n")
                window, worst = now, 0.0


def worst_lag(directory: Path, since: float, until: float) -> dict[str, Any]:
    """The worst lateness (ms) of any worker in the windows that overlap [since, until], in
    how many windows it was over 100 ms and over 500 ms, and each window over 50 ms as
    (seconds after ``since``, worker pid, ms)."""
    worst = 0.0
    over_100 = over_500 = windows = 0
    spikes: list[tuple[float, int, float]] = []
    for path in sorted(directory.glob("*.lag")):
        pid = int(path.stem) if path.stem.isdigit() else 0
        for line in path.read_text().splitlines():
            try:
                start_s, end_s, lag_s = line.split()
                start_t, end_t, lag = float(start_s), float(end_s), float(lag_s)
            except ValueError:
                continue  # a line being written
            if end_t < since or start_t > until:
                continue
            windows += 1
            worst = max(worst, lag)
            over_100 += lag > 100
            over_500 += lag > 500
            if lag > 50:
                spikes.append((round(end_t - since, 1), pid, lag))
    return {"worstMs": worst, "windows": windows, "windowsOver100Ms": over_100,
            "windowsOver500Ms": over_500, "spikes": sorted(spikes)}
