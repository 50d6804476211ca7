"""Server CPU per delivery against the number of idle users: ``python -m bench.delivery_cost``.

Issue 12 measured 1.8–6.2 s of relay's CPU per 10,000 deliveries at 100,000 users against
0.52 s at 10,000. This isolates that growth without 100,000 connections: one relay
(``--workers`` gunicorn workers, production config, relay_publish), then for each size in
``--sizes`` (ascending) the load generators open idle users up to it and, in order:

* idle    — ``--idle`` seconds with nothing published: each role's CPU per second (the
            heartbeats, the housekeeping ticks, the listener's periodic work);
* deliver — ``--rate`` notifications/s for ``--seconds`` to random users among the connected
            ones, until every one has arrived: each role's CPU per 10,000 deliveries, both as
            measured and net of the idle rate over the same wall time.

CPU time of the processes, not wall time: it does not depend on what else the shared machine
runs. Not a test; figures for docs/performance.md and the commit messages, one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.scenarios import run_writer, split, users, wait_for_kinds
from bench.servers import ROOT, Database, LoadGenerators, RelayServer, cpu_seconds

ROLES = ("listener", "worker")


def role_cpu(server: RelayServer) -> dict[str, float]:
    """Each role's CPU seconds, and its system (kernel) part as ``<role>Sys``."""
    roles = server.roles()
    out = {role: cpu_seconds(roles[role]) for role in ROLES}
    for role in ROLES:
        out[role + "Sys"] = sum(_system(p) for p in roles[role])
    return out


def _system(process: Any) -> float:
    try:
        return float(process.cpu_times().system)
    except psutil.Error:
        return 0.0


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


def measure_size(server: RelayServer, gens: LoadGenerators, database: Database, size: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    time.sleep(args.settle)
    cpu0, started = role_cpu(server), time.monotonic()
    time.sleep(args.idle)
    idle_seconds = time.monotonic() - started
    idle = delta(role_cpu(server), cpu0)
    idle_rate = {role: idle[role] / idle_seconds for role in ROLES}

    gens.all({"cmd": "reset"})
    cpu0, started = role_cpu(server), time.monotonic()
    written = run_writer("steady", "--dsn", database.url, "--rate", str(args.rate),
                         "--users", str(size), "--duration", str(args.seconds),
                         "--warmup", "0", "--per-tx", str(args.per_tx),
                         "--threads", "2", "--publish", "publish", "--spread", "random",
                         timeout=args.seconds + 120)
    wait_for_kinds(gens, ("w", "s"), written["committed"])
    seconds = time.monotonic() - started
    used = delta(role_cpu(server), cpu0)
    delivered = sum(r["updates"] for r in gens.all({"cmd": "stats"}))
    per10k = {role: used[role] / delivered * 10_000 for role in ROLES} if delivered else {}
    net = ({role: (used[role] - idle_rate[role] * seconds) / delivered * 10_000
            for role in ROLES} if delivered else {})
    system = {role: used[role + "Sys"] / used[role] if used[role] else 0.0 for role in ROLES}
    return {"users": size, "idleCpuPerSecond": idle_rate, "systemShare": system,
            "committed": written["committed"],
            "delivered": delivered, "seconds": seconds, "cpu": used,
            "cpuPer10k": per10k, "netCpuPer10k": net}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,40000",
                        help="idle users to hold, ascending, comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--per-tx", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--relay-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    per_loadgen = 15_000
    loadgens = max(1, -(-sizes[-1] // per_loadgen))
    env = dict(item.split("=", 1) for item in args.relay_env)
    env.setdefault("RELAY_USER_CHANNELS", "off")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relay-delivery-") as tmp:
        workdir = Path(tmp)
        database = Database(workdir, max_connections=100)
        database.start()
        server = None
        gens = None
        try:
            subprocess.run([sys.executable, "-m", "relay", "db", "install"], cwd=ROOT,
                           env={**os.environ, "DATABASE_URL": database.url},
                           capture_output=True, check=True, timeout=120)
            server = RelayServer(workdir, database.url, args.workers, sizes[-1],
                                 worker_connections=min(19_800, sizes[-1]), env=env)
            server.start(timeout=120)
            pids = {role: [p.pid for p in procs] for role, procs in server.roles().items()}
            print(f"relay pids (for py-spy): {json.dumps(pids)}", file=sys.stderr, flush=True)
            gens = LoadGenerators(loadgens, server.port)
            held = 0
            for size in sizes:
                gens.each(split(users(held + 1, size - held), len(gens), cmd="open",
                                concurrency=100, timeout=60.0))
                held = size
                print(f"holding {size:,} users", file=sys.stderr, flush=True)
                results.append(measure_size(server, gens, database, size, args))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            if gens is not None:
                gens.all({"cmd": "close"})
                gens.stop()
            if server is not None:
                server.stop()
            database.stop()
    print(f"{'users':>8} {'delivered':>10} | {'idle CPU/s  L / W':>18} | "
          f"{'CPU s per 10k  L / W':>21} | {'net of idle  L / W':>19} | kernel share L / W")
    for r in results:
        i, c, n = r["idleCpuPerSecond"], r["cpuPer10k"], r["netCpuPer10k"]
        print(f"{r['users']:>8,} {r['delivered']:>10,} | {i['listener']:8.3f} {i['worker']:8.3f}"
              f" | {c.get('listener', 0):10.3f} {c.get('worker', 0):9.3f}"
              f" | {n.get('listener', 0):9.3f} {n.get('worker', 0):9.3f}"
              f" | {r['systemShare']['listener']:6.0%} {r['systemShare']['worker']:6.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
