"""Where a stopping relay's seconds go: when each of its processes exited, and what they logged.

The drain phase of the scale bench (bench/scale.py) sends SIGTERM to the master and times its
exit. That one figure hid where the time went (issue 12: the master's exit came 1.8 s after
its last worker, never explained). ``ExitWatch(roles)`` polls every process of the tree from
a thread, every 20 ms, and notes when each stopped running (gone, or a zombie waiting for its
parent's ``wait``: the moment it exited); ``log_timeline`` reads the relay's JSON log lines of
the stop (the drain's start and end, each worker's exit, the master's shutdown).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

# What the stop logs, by who logs it (relay.worker.node/process, gunicorn, the supervisor).
MARKERS = ("draining ", "drain finished", "worker exiting", "Worker exiting", "Shutting down",
           "Handling signal", "stopping", "listener")


class ExitWatch:
    def __init__(self, roles: dict[str, list[psutil.Process]], every: float = 0.02) -> None:
        self.roles = {p.pid: role for role, processes in roles.items() for p in processes}
        self._processes = [p for processes in roles.values() for p in processes]
        self.exited: dict[int, float] = {}
        self.cpu: dict[int, tuple[float, float]] = {}  # pid → (CPU s at the start, last seen)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.exited) < len(self._processes):
            self._poll()
            self._stop.wait(self._every)

    def _poll(self) -> None:
        for process in self._processes:
            if process.pid in self.exited:
                continue
            try:
                running = process.status() != psutil.STATUS_ZOMBIE
                if running:
                    times = process.cpu_times()
                    used = times.user + times.system
                    self.cpu[process.pid] = (self.cpu.get(process.pid, (used,))[0], used)
            except psutil.Error:
                running = False
            if not running:
                self.exited[process.pid] = time.time()

    def stop(self, origin: float) -> dict[str, Any]:
        """Stop watching; per role, the seconds after ``origin`` at which each process exited
        (``None``: still running when the watch stopped), and under ``cpu`` the CPU seconds
        each used meanwhile (up to its last sample, at most 20 ms before its exit)."""
        self._stop.set()
        self._thread.join(5)
        self._poll()  # the master, reaped by the caller's wait just now, between two polls
        out: dict[str, Any] = {"cpu": {}}
        for pid, role in self.roles.items():
            at = self.exited.get(pid)
            out.setdefault(role, {})[str(pid)] = None if at is None else round(at - origin, 3)
            first, last = self.cpu.get(pid, (0.0, 0.0))
            out["cpu"].setdefault(role, {})[str(pid)] = round(last - first, 2)
        return out


def log_timeline(log: Path, origin: float) -> list[list[Any]]:
    """The stop's log lines from ``origin`` on: [seconds after it, pid, logger, message]."""
    rows: list[list[Any]] = []
    if not log.exists():
        return rows
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        message = str(entry.get("msg", ""))
        if at >= origin - 0.01 and any(marker in message for marker in MARKERS):
            rows.append([round(at - origin, 3), entry.get("pid"), entry.get("logger"),
                         message[:160]])
    return rows
