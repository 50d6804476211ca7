"""The listener's delivery tail with many users held: ``python -m bench.listener_tail``.

The scale bench's steady phase at 100,000 held users had a client p99 of 41–44 ms at 500 and
1,000 messages/s, already in the listener's own commit → dispatch histogram. This reproduces
it without WebSocket clients: the real listener (``python -m relay listen``) against an
embedded PostgreSQL, one stand-in worker over the listener's socket holding ``--users`` users
(two channels each), and one publisher committing ``--rate`` messages/s through
``relay_publish``, each payload carrying its send time as ``ts``. The worker timestamps each
``UPDATE`` on arrival: commit → worker latency percentiles, the messages later than 20 ms
(when, and how late: a listener stall delays a run of consecutive messages, a publisher
stall a single one), the listener's CPU per notification, and with ``--gc`` every full
collection in the listener (``gc.callbacks``: when, how long, how many tracked objects it leaves).
Not a test: figures for docs/performance.md, printed as text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.listener_cost import ROOT, Worker, _cpu, _wait, scratch_database

_TS = re.compile(rb'"ts": ?([0-9.]+)')
# Run as the listener with ``--gc``: every full collection (and any other over 2 ms) logged.
_GC_WRAPPER = """
import gc, sys, time
log = open(sys.argv[1], "a", buffering=1)
started = [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - started[0]) * 1000
    if info["generation"] == 2 or ms > 2:
        log.write(f"{time.time():.3f} {info['generation']} {ms:.1f} {len(gc.get_objects())}\\n")
gc.callbacks.append(timed)
sys.argv = ["relay", "listen"]
from relay.cli import main
raise SystemExit(main())
"""


class TimingWorker(Worker):
    """The stand-in worker, also noting each UPDATE's arrival minus its payload's ``ts``."""

    def __init__(self, path: str) -> None:
        self.latencies: list[tuple[float, float]] = []  # (arrival, seconds late)
        super().__init__(path)

    def on_update(self, body: bytes | memoryview) -> None:
        now = time.time()
        found = _TS.search(bytes(body))
        if found:
            self.latencies.append((now, now - float(found[1])))


def run(url: str, users: int, rate: int, seconds: float, workdir: Path,
        gc_log: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    socket_path = str(workdir / "listener.sock")
    env.update(DATABASE_URL=url, WEBSOCKET_JWT_SECRET="b" * 40, RELAY_SOCKET_PATH=socket_path,
               RELAY_USER_CHANNELS="off", RELAY_LOG_LEVEL="warning", RELAY_LINGER_SECONDS="600")
    command = [sys.executable, "-m", "relay", "listen"]
    if gc_log:
        gc_log.write_text("")
        command = [sys.executable, "-c", _GC_WRAPPER, str(gc_log)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                            stdout=(workdir / "listener.log").open("wb"))
    try:
        _wait(lambda: os.path.exists(socket_path), 30, "the listener's socket")
        worker = TimingWorker(socket_path)
        _wait(lambda: worker.stats.get("database") == "connected", 30, "the database")
        worker.attach(range(users), "u")
        _wait(lambda: worker.answers == users, 3600, "every attach")
        time.sleep(2)
        names = [f"u{i}" for i in range(users)]
        conn = psycopg2.connect(url)
        conn.autocommit = True
        cur = conn.cursor()
        worker.latencies.clear()
        cpu = _cpu(proc.pid)
        began, began_wall, sent = time.monotonic(), time.time(), 0
        while time.monotonic() - began < seconds:
            delay = began + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cur.execute("SELECT relay_publish(%s, %s::json)",
                        (f"user_Usage_{random.choice(names)}",
                         json.dumps({"n": sent, "ts": time.time(), "note": "x" * 150})))
            sent += 1
        conn.close()
        _wait(lambda: worker.updates >= sent, 60, "the updates")
        cpu = _cpu(proc.pid) - cpu
        late = sorted(s for _, s in worker.latencies)

        def q(f: float) -> float:
            return round(late[min(len(late) - 1, int(f * len(late)))] * 1000, 1)

        out = {"users": users, "rate": rate, "sent": sent, "received": len(late),
               "p50Ms": q(0.5), "p90Ms": q(0.9), "p99Ms": q(0.99), "p999Ms": q(0.999),
               "maxMs": round(late[-1] * 1000, 1),
               "listenerUsPerNotification": round(cpu / sent * 1e6),
               "over20Ms": [(round(at - began_wall, 2), round(s * 1000)) for at, s in
                            worker.latencies if s > 0.02][:100]}
        if gc_log:
            out["fullCollections"] = [
                {"at": round(float(at) - began_wall, 2), "ms": float(ms), "trackedAfter": int(n)}
                for at, gen, ms, n in (line.split() for line in gc_log.read_text().splitlines())
                if gen == "2"]
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=500, help="messages per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gc", action="store_true",
                        help="log the listener's full collections (at = seconds into the phase; "
                             "negative: during the attaches)")
    args = parser.parse_args()
    with scratch_database("listener-tail-") as (url, workdir):
        result = run(url, args.users, args.rate, args.seconds, workdir,
                     workdir / "gc.log" if args.gc else None)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
