"""What every benchmark reads of the machine and of its own run: load, CPU, percentiles, the
machine's description, and the progress lines on stderr. Used by ``bench.run``,
``bench.scenarios``, ``bench.scale`` and ``bench.sweep``; imports none of them."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.servers import (
    ROOT,
)


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5,
                              check=False).stdout.strip()
    except OSError:
        return ""


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds over all cores, wall clock) now: diff two to get a phase's load."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0), time.monotonic()


def busy_share(before: tuple[float, float]) -> float:
    """Share of the machine's cores that were busy since ``before`` (everything, not only us):
    the machine is shared, so a figure taken while others ran is marked by this."""
    busy, now = machine_busy()
    return (busy - before[0]) / ((now - before[1]) * (os.cpu_count() or 1))


def client_cpu(before: list[float], after: list[float], seconds: float) -> dict[str, float]:
    """CPU of the load generators: the busiest one's share of a core, and the total."""
    used = [b - a for a, b in zip(before, after, strict=True)]
    return {"maxCoreShare": max(used) / seconds if seconds else 0.0, "cpuSeconds": sum(used)}


def percentiles(ordered: list[float]) -> dict[str, float]:
    if not ordered:
        return {}
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1,
                                                                   int(len(ordered) * 0.99))],
            "max": ordered[-1], "count": len(ordered)}


def merge_counts(items: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in items:
        for key, value in item.items():
            total[key] = total.get(key, 0) + value
    return total


def raise_open_files(needed: int) -> None:
    """Every held connection is a descriptor in a server and in a load generator."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed)
    if hard != resource.RLIM_INFINITY and target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return
        except (ValueError, OSError):
            target = hard  # not root: as many as we may
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = shutil.which("node")
    return {
        "nproc": os.cpu_count(), "cpu": model,
        "ramGiB": round(psutil.virtual_memory().total / 2**30, 1),
        "loadAverage": os.getloadavg(), "python": platform.python_version(),
        "node": subprocess.run([node, "--version"], capture_output=True, text=True,
                               check=False).stdout.strip() if node else None,
        "kernel": platform.release(),
    }


def git_commit() -> str | None:
    """The checkout's commit (with "+" when it has uncommitted changes), for the record."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def database_version(url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
