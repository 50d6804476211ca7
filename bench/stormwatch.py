"""Where a reconnect storm's CPU and time go: who ran out, relay or its load generators.

Used by ``bench.scale``'s storm phase. ``CpuWatch`` samples the CPU time of each role
(relay's workers, its listener and master, PostgreSQL, each load generator) once a second
from ``/proc`` (psutil), so that the storm's rate can be set beside the CPU each side got:
relay's CPU per completed handshake times the rate is what relay needs; the rest of the two
cores is what the clients had. ``relay_counters`` reads the restarted relay's own counts from
``/metrics`` on its internal port: WebSockets upgraded and connected, closes by code, refused
tokens by reason (evicted while pending, auth timeout), which say how many handshakes the
server started and did not finish, and why.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.servers import cpu_seconds

_SAMPLE = re.compile(r'^(relay_[a-z_]+)(?:\{(\w+)="([^"]*)"\})? ([0-9.eE+-]+)$')


class CpuWatch:
    """CPU seconds per role, sampled on each ``sample()`` (the storm's once-a-second loop)."""

    def __init__(self, roles: dict[str, list[psutil.Process]]) -> None:
        self.roles = {name: procs for name, procs in roles.items() if procs}
        self.started = time.monotonic()
        self.first = self._read()
        self.last = dict(self.first)
        self.last_at = self.started
        self.seconds: list[dict[str, float]] = []  # per sample: role → share of one core
        self.cumulative: list[tuple[float, dict[str, float]]] = []  # (s, CPU s per role)
        # Seconds each role was runnable but waited for a CPU (/proc/<pid>/schedstat): a
        # role with little CPU and little wait was idle (waiting on the others), one with a
        # long wait was starved of the cores.
        self.first_wait = self._waited()

    def _waited(self) -> dict[str, float]:
        return {name: run_queue_seconds(procs) for name, procs in self.roles.items()}

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(procs) for name, procs in self.roles.items()}

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        current = self._read()
        wall = max(now - self.last_at, 1e-6)
        shares = {name: round((current[name] - self.last[name]) / wall, 3)
                  for name in current}
        self.last, self.last_at = current, now
        self.seconds.append(shares)
        self.cumulative.append((now - self.started, current))
        return shares

    def idle_since_last(self) -> dict[str, float]:
        """Each role's share of one core since the last ``sample``, not recorded as one: read
        after the storm's hold, what the held connections cost with no handshake going."""
        wall = max(time.monotonic() - self.last_at, 1e-6)
        current = self._read()
        return {name: round((current[name] - self.last[name]) / wall, 4) for name in current}

    def until(self, sample: int) -> dict[str, Any]:
        """Like ``totals``, up to the ``sample``-th sample (from 0)."""
        at, current = self.cumulative[sample]
        return {"wallSeconds": round(at, 1),
                "cpuSeconds": {name: round(current[name] - self.first[name], 2)
                               for name in current}}

    def totals(self) -> dict[str, Any]:
        """CPU seconds of each role since the start, and the wall time it took."""
        used = {name: round(self.last[name] - self.first[name], 2) for name in self.last}
        waited = self._waited()
        return {"wallSeconds": round(self.last_at - self.started, 1), "cpuSeconds": used,
                "runQueueSeconds": {name: round(waited[name] - self.first_wait[name], 2)
                                    for name in waited}}


def net_per_handshake(totals: dict[str, Any], idle: dict[str, float],
                      handshakes: int) -> dict[str, float]:
    """Each role's CPU ms per handshake beyond what it spends with no handshake going: its
    CPU over the storm less its idle share (the hold's: the held connections' pings, the
    probe's deliveries) over the same wall time. The storm's tail, the last clients held
    back by their own backoff, otherwise counts the held ones' heartbeats per handshake."""
    wall = totals["wallSeconds"]
    return {name: round(max(0.0, used - idle.get(name, 0.0) * wall) / handshakes * 1000, 3)
            for name, used in totals["cpuSeconds"].items()} if handshakes else {}


def run_queue_seconds(processes: list[psutil.Process]) -> float:
    """Seconds the processes' threads were runnable and waiting for a CPU, in all."""
    total = 0
    for process in processes:
        try:
            for task in Path(f"/proc/{process.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the listening socket on ``port``."""
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5, check=False).stdout.split()
        return int(out[1]) if len(out) > 1 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def listen_overflows() -> int:
    """The kernel's count of SYNs dropped because an accept queue was full (every socket:
    read as a difference)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[0::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def relay_counters(port: int, timeout: float = 5.0) -> dict[str, Any]:
    """relay's counters from ``/metrics`` (internal port): plain ones by name, labelled ones
    as ``{name: {label: value}}``. Empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return parse_counters(text)


def parse_counters(text: str) -> dict[str, Any]:
    """relay's samples of a ``/metrics`` text (``relay_counters``); histograms left out."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_name, label, value = match.groups()
        if label_name == "le" or name.endswith(("_sum", "_count")):
            continue  # the histogram's
        name = name.removesuffix("_total")
        if label is None:
            found[name] = float(value)
        else:
            found.setdefault(name, {})[label] = float(value)
    return found


def who_ran_out(totals: dict[str, Any], completed: int, cores: int) -> dict[str, Any]:
    """The storm's CPU budget: relay's CPU per completed handshake, what the rate of 1,500/s
    would need of it, and the share of the cores each side had meanwhile."""
    used = totals["cpuSeconds"]
    wall = totals["wallSeconds"] or 1e-6
    relay = sum(v for k, v in used.items() if k in ("worker", "listener", "master"))
    clients = sum(v for k, v in used.items() if k.startswith("loadgen"))
    database = used.get("postgres", 0.0)
    per = relay / completed if completed else None
    return {
        "relayCpuSeconds": round(relay, 2),
        "loadgenCpuSeconds": round(clients, 2),
        "postgresCpuSeconds": round(database, 2),
        "relayCoresUsed": round(relay / wall, 2),
        "loadgenCoresUsed": round(clients / wall, 2),
        "postgresCoresUsed": round(database / wall, 2),
        "cores": cores,
        "relayCpuMsPerHandshake": round(per * 1000, 3) if per else None,
        # What relay alone would need for the target rate, in cores.
        "relayCoresFor1500PerSecond": round(per * 1500, 2) if per else None,
        "loadgenCpuMsPerHandshake": round(clients / completed * 1000, 3) if completed else None,
    }
