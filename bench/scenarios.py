"""The scenarios ``make bench`` runs against one started server (open, steady, burst, connect,
the NOTIFY ceiling), each returning its figures as a dict. ``bench.run`` chooses and reports
them; ``bench.scale`` and ``bench.sweep`` reuse them at their own sizes."""

from __future__ import annotations

import base64
import json
import re
import resource
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any

from bench.measure import busy_share, client_cpu, machine_busy, merge_counts, percentiles
from bench.servers import (
    ROOT,
    Database,
    LoadGenerators,
    NodeServer,
    RelayServer,
    Server,
    cpu_seconds,
)

# The listener's line for a catch-up of more than one page (relay/listener/follower.py).
_CATCH_UP = re.compile(r"outbox catch-up: (\d+) messages in (\d+) pages, first page read "
                       r"([\d.]+) s after the scan began, the last handed on ([\d.]+) s "
                       r"after it \(scan began at ([\d.]+)\)")


@dataclass
class Config:
    scenarios: tuple[str, ...]
    servers: tuple[str, ...]
    connections: int  # C
    rate: float  # R
    users: int  # U
    duration: float
    warmup: float
    burst_users: int
    connect_seconds: float
    connect_concurrency: int
    workers: int
    loadgens: int
    per_tx: int
    writer_threads: int
    per_client_max: int
    open_concurrency: int
    quick: bool = False
    notify_writers: int = 8
    notify_seconds: float = 5.0
    notify_dsn: str | None = None
    outbox_rounds: int = 1500  # outbox scenario: rounds of base/notify/publish on one writer
    outbox_seconds: float = 10.0  # outbox scenario: the concurrent writers' phase
    publish: str = "notify"  # bench.writer --publish: pg_notify per user, or relay_publish
    spread: str = "modulo"  # bench.writer --spread: users n % U + 1, or random among U


def users(first: int, count: int) -> list[str]:
    return [str(u) for u in range(first, first + count)]


def split(items: list[str], parts: int, **command: Any) -> list[dict[str, Any]]:
    size = -(-len(items) // parts)
    return [{**command, "users": items[i * size:(i + 1) * size]} for i in range(parts)]


def open_connections(gens: LoadGenerators, count: int, config: Config) -> dict[str, Any]:
    cpu0 = gens.cpu()
    started = time.monotonic()
    replies = gens.each(split(users(1, count), len(gens), cmd="open",
                              concurrency=config.open_concurrency))
    seconds = time.monotonic() - started
    failures: dict[str, int] = {}
    for reply in replies:
        for reason, n in reply["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    opened = sum(r["opened"] for r in replies)
    return {"opened": opened, "failures": failures, "seconds": seconds,
            "perSecond": opened / seconds if seconds else 0.0,
            "clientCpu": client_cpu(cpu0, gens.cpu(), seconds)}


def steady(gens: LoadGenerators, server: Server, database: Database, config: Config,
           user_count: int) -> dict[str, Any]:
    gens.all({"cmd": "reset"})
    split0 = _cpu_split(server, database, gens)
    listener0 = _listener_latency(server)
    server_cpu0, pg_cpu0, gen_cpu0 = (cpu_seconds(server.tree()),
                                      cpu_seconds(database.processes()), gens.cpu())
    started, busy0 = time.monotonic(), machine_busy()
    written = run_writer("steady", "--dsn", database.url, "--rate", str(config.rate),
                         "--users", str(user_count), "--duration", str(config.duration),
                         "--warmup", str(config.warmup), "--per-tx", str(config.per_tx),
                         "--threads", str(config.writer_threads),
                         "--publish", config.publish, "--spread", config.spread,
                         timeout=config.duration + config.warmup + 120)
    wait_for_kinds(gens, ("w", "s"), written["committed"])
    seconds = time.monotonic() - started
    server_cpu = cpu_seconds(server.tree()) - server_cpu0
    # The writer's backends came and went during the phase: the writer measured them.
    pg_cpu = cpu_seconds(database.processes()) - pg_cpu0 + (written["backendCpuSeconds"] or 0.0)
    gen_cpu = client_cpu(gen_cpu0, gens.cpu(), seconds)
    split = {role: spent - split0.get(role, 0.0)
             for role, spent in _cpu_split(server, database, gens).items()}
    split["writerBackends"] = written["backendCpuSeconds"]
    split["writer"] = written["cpuSeconds"]
    stats = gens.all({"cmd": "stats"})
    time.sleep(1.2)  # /metrics answers from the listener's once-a-second snapshot
    to_listener = _bucket_quantiles(listener0, _listener_latency(server))
    latencies = array("f")
    for reply in stats:
        latencies.frombytes(base64.b64decode(reply["latencies"]))
    ordered = sorted(latencies)
    worst: dict[int, float] = {}
    arrived: dict[int, int] = {}
    for reply in stats:
        for tenth, latency in reply["worst"].items():
            worst[int(tenth)] = max(worst.get(int(tenth), 0.0), latency)
        for tenth, count in reply["arrived"].items():
            arrived[int(tenth)] = arrived.get(int(tenth), 0) + count
    # Throughput: updates that arrived while the writer was committing, per second (not
    # from the last arrival, which would charge one late message to the whole run).
    first_tenth = int(written["start"] * 10) + 1
    tenths = int(written["seconds"] * 10) - 1
    in_window = sum(arrived.get(first_tenth + i, 0) for i in range(tenths))
    unique = sum(r["unique"] for r in stats)
    delivered = sum(r["updates"] for r in stats)
    measured = sum(r["byKind"].get("s", 0) for r in stats)
    return {
        "users": user_count, "committed": written["committed"],
        "committedPerSecond": written["rate"], "writerWorstLagS": written["worstLagS"],
        "writerErrors": written["errors"], "measuredCommitted": written["measured"],
        "measuredDelivered": measured,
        "deliveredPerSecond": in_window / (tenths / 10) if tenths > 0 else 0.0,
        "latencyMs": percentiles(ordered), "delivered": delivered,
        "lost": written["committed"] - unique, "duplicated": sum(r["duplicates"] for r in stats),
        "misrouted": sum(r["misrouted"] for r in stats),
        "seqGaps": sum(r["seqGaps"] for r in stats),
        "closes": merge_counts(r["closes"] for r in stats),
        "serverCpuSeconds": server_cpu, "postgresCpuSeconds": pg_cpu,
        "writerCpuSeconds": written["cpuSeconds"],
        "serverCpuPer10k": server_cpu / delivered * 10_000 if delivered else None,
        "postgresCpuPer10k": pg_cpu / delivered * 10_000 if delivered else None,
        "clientCpu": gen_cpu, "machineBusy": busy_share(busy0),
        # CPU seconds of each side (listener, workers, PostgreSQL's standing processes, the
        # writer's backends, the load generators, the writer) and per committed message.
        "cpuSplit": split,
        "cpuPerMessageUs": {role: round(spent / written["committed"] * 1e6, 1)
                            for role, spent in split.items()
                            if spent is not None and written["committed"]},
        # Where a message's time goes before the clients: how late the writer started each
        # transaction against its schedule (not in the latency: ts is taken as the row is
        # built), the statement's round trip (publish + COMMIT, the commit lock's queue
        # included), and, with the outbox, ts -> numbered under the commit lock.
        "stages": {"writerLateMs": written["lateMs"], "writerRoundTripMs": written["roundTripMs"],
                   "builtToNumberedMs": _numbered_after(database, written["start"])
                   if config.publish == "publish"
                   else None,
                   # ts -> the listener's dispatch (its /metrics histogram over the phase, every
                   # message: warm-up included): the upper bound of the bucket holding p50/p99.
                   "builtToListenerAtMostMs": to_listener},
        "clientLagMs": {"p99": max((r["lagMs"].get("p99", 0.0) for r in stats), default=0.0),
                        "max": max((r["lagMs"].get("max", 0.0) for r in stats), default=0.0)},
        # Worst latency of each 0.1 s, from the first measured commit: where spikes happen.
        "worstByTenth": [[round(t / 10 - written["measuredStart"], 1), round(worst[t], 2)]
                         for t in sorted(worst)],
    }


def _listener_latency(server: Server) -> list[tuple[float, float]] | None:
    """relay's commit -> listener histogram (cumulative counts per upper bound, seconds) from
    /metrics on its internal port, or None for another server."""
    import urllib.request

    port = getattr(server, "internal_port", None)
    if not isinstance(server, RelayServer) or port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = re.findall(r'relay_commit_to_listener_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    return [(float(bound), float(count)) for bound, count in found]


def _bucket_quantiles(before: list[tuple[float, float]] | None,
                      after: list[tuple[float, float]] | None) -> dict[str, Any] | None:
    if not after:
        return None
    earlier = dict(before or [])
    counts = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None

    def at(q: float) -> float | None:  # None: over the last finite bound
        bound = next(bound for bound, count in counts if count >= q * total)
        return None if bound == float("inf") else bound * 1000

    return {"p50": at(0.5), "p99": at(0.99), "count": int(total),
            "overLastBound": int(total - counts[-2][1]) if len(counts) > 1 else 0}


def _numbered_after(database: Database, since: float) -> dict[str, float] | None:
    """ts (clock_timestamp() as the payload was built) -> created_at (clock_timestamp() under
    the commit lock, as the message was numbered), over the measured rows of the steady phase
    that started at ``since`` (Unix time)."""
    import psycopg2

    conn = psycopg2.connect(database.url, application_name="bench")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('relay.outbox') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("""
                SELECT percentile_disc(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY d), max(d),
                       count(*)
                FROM (SELECT (extract(epoch FROM created_at) - (payload->>'ts')::float8)
                             * 1000 AS d
                      FROM relay.outbox
                      WHERE created_at >= to_timestamp(%s) AND payload->>'k' = 's') t""",
                        (since,))
            quantiles, worst, count = cur.fetchone()
    finally:
        conn.close()
    if not count:
        return None
    p50, p90, p99 = quantiles
    return {"p50": round(p50, 3), "p90": round(p90, 3), "p99": round(p99, 3),
            "max": round(worst, 3), "count": count}


def burst(gens: LoadGenerators, server: Server, database: Database,
          user_count: int, among: int = 0, publish: str = "notify",
          limit: float = 60.0) -> dict[str, Any]:
    """One transaction notifying ``user_count`` users: 1…user_count, or a random sample of
    them among 1…``among``."""
    gens.all({"cmd": "reset"})
    split0 = _cpu_split(server, database, gens)
    server_cpu0, busy0 = cpu_seconds(server.tree()), machine_busy()
    written = run_writer("burst", "--dsn", database.url, "--users", str(user_count),
                         "--among", str(among), "--publish", publish, timeout=120)
    wait_for_kinds(gens, ("b",), user_count, limit=limit)
    server_cpu = cpu_seconds(server.tree()) - server_cpu0
    split = {role: seconds - split0.get(role, 0.0)
             for role, seconds in _cpu_split(server, database, gens).items()}
    split["writer"] = written["cpuSeconds"]
    stats = gens.all({"cmd": "stats"})
    received = sum(r["byKind"].get("b", 0) for r in stats)
    arrivals = array("d")
    for reply in stats:
        arrivals.frombytes(base64.b64decode(reply["burstTimes"]))
    after = sorted(t - written["beforeCommit"] for t in arrivals)
    last = max((r["last"].get("b", 0.0) for r in stats), default=0.0)
    first = min((r["first"].get("b", float("inf")) for r in stats), default=0.0)
    return {"users": user_count, "received": received,
            "lost": user_count - sum(r["unique"] for r in stats),
            "commitSeconds": written["committed"] - written["beforeCommit"],
            "firstSeconds": first - written["beforeCommit"] if received else None,
            "lastSeconds": last - written["beforeCommit"] if received else None,
            "serverCpuSeconds": server_cpu, "machineBusy": busy_share(busy0),
            "cpuSplit": split, "catchUp": _catch_up(server, written["beforeCommit"]),
            "arrivalSeconds": {f"p{q}": after[min(len(after) - 1, len(after) * q // 100)]
                               for q in (10, 50, 90, 99)} if after else {}}


def _cpu_split(server: Server, database: Database, gens: LoadGenerators) -> dict[str, float]:
    """CPU seconds so far of each part of the machine's work: relay's listener and workers
    (the whole server tree for another server), PostgreSQL, the load generators."""
    split = {"postgres": cpu_seconds(database.processes()), "loadgens": sum(gens.cpu())}
    if isinstance(server, RelayServer):
        roles = server.roles()
        split["listener"] = cpu_seconds(roles["listener"])
        split["workers"] = cpu_seconds(roles["worker"])
    else:
        split["server"] = cpu_seconds(server.tree())
    return split


def _catch_up(server: Server, before_commit: float) -> dict[str, Any] | None:
    """The listener's last catch-up of more than one page, timed from the COMMIT's start
    (a burst's messages after its sync frame), if its log says so."""
    if not isinstance(server, RelayServer):
        return None
    found = _CATCH_UP.findall(server.log_tail(400))
    if not found:
        return None
    messages, pages, first, last, began = found[-1]
    start = float(began) - before_commit
    return {"messages": int(messages), "pages": int(pages), "startSeconds": start,
            "firstPageSeconds": start + float(first), "lastHandedOnSeconds": start + float(last)}


def connect(gens: LoadGenerators, server: Server, config: Config, pool: int) -> dict[str, Any]:
    concurrency = max(1, config.connect_concurrency // len(gens))
    if isinstance(server, NodeServer) and server.name == "per-client-listen":
        concurrency = max(1, min(concurrency, config.per_client_max // (2 * len(gens))))
    cpu0, server_cpu0, busy0 = gens.cpu(), cpu_seconds(server.tree()), machine_busy()
    started = time.monotonic()
    replies = gens.each(split(users(1, max(pool, len(gens))), len(gens), cmd="churn",
                              concurrency=concurrency, duration=config.connect_seconds))
    seconds = time.monotonic() - started
    handshakes = sum(r["handshakes"] for r in replies)
    p99 = max((r["handshakeMs"].get("p99", 0.0) for r in replies), default=0.0)
    return {"handshakes": handshakes, "seconds": config.connect_seconds,
            "perSecond": handshakes / config.connect_seconds,
            "failures": merge_counts(r["failures"] for r in replies),
            "handshakeP99Ms": p99, "inFlight": concurrency * len(gens),
            "serverCpuSeconds": cpu_seconds(server.tree()) - server_cpu0,
            "clientCpu": client_cpu(cpu0, gens.cpu(), seconds), "machineBusy": busy_share(busy0)}


def notify_ceiling(database: Database, config: Config) -> dict[str, Any]:
    """Notifying (and, for contrast, plain) commits/s, with fsync off and on.

    The embedded cluster runs with fsync off (relay.dev.postgres); a notifying commit holds
    PostgreSQL's NOTIFY lock until its commit record is flushed, so the run with fsync on is
    the one that stands for a durable database. With ``--notify-dsn`` the given database is
    measured as it is configured."""
    import psycopg2

    def run(dsn: str, plain: bool, write: bool = False,
            publish: bool = False) -> dict[str, Any]:
        return run_writer("ceiling", "--dsn", dsn, "--writers", str(config.notify_writers),
                          "--seconds", str(config.notify_seconds),
                          *(["--plain"] if plain else []), *(["--write"] if write else []),
                          *(["--publish", "publish"] if publish else []),
                          timeout=config.notify_seconds + 60)

    def variants(dsn: str, publish: bool = False) -> dict[str, Any]:
        # A NOTIFY alone writes no WAL, so its COMMIT waits for no flush; an app's notifying
        # transaction writes a row (its trigger fires on it) and waits for the flush, holding
        # the lock that serialises notifying commits: its ceiling is the one that counts.
        out = {"notify": run(dsn, False), "plain": run(dsn, True),
               "notifyWrite": run(dsn, False, True), "plainWrite": run(dsn, True, True)}
        if publish:
            out["publishWrite"] = run(dsn, False, True, publish=True)
        return out

    if config.notify_dsn:
        # relay_publish's ceiling too, where relay's SQL is installed (python -m relay db
        # install): the figure that matters with the durable outbox, on the real database.
        probe = psycopg2.connect(config.notify_dsn)
        try:
            with probe.cursor() as cur:
                cur.execute("SELECT to_regprocedure('public.relay_publish(text,json)') "
                            "IS NOT NULL")
                installed = bool(cur.fetchone()[0])
        finally:
            probe.close()
        return {"external": variants(config.notify_dsn, publish=installed)}
    out: dict[str, Any] = {}
    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    try:
        for fsync in ("off", "on"):
            with conn.cursor() as cur:
                cur.execute(f"ALTER SYSTEM SET fsync = {fsync}")
                cur.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)  # the reload reaches every backend at its next command
            key = f"fsync{fsync.capitalize()}"
            out[key] = variants(database.url)
    finally:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET fsync")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
    return out


def outbox_cost(database: Database, config: Config) -> dict[str, Any]:
    """bench/outbox_cost.py in a database of its own on the embedded cluster, fsync on (a
    COMMIT waits for its flush: the latency an app sees on a durable database)."""
    import psycopg2
    from psycopg2.extensions import make_dsn

    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS bench_outbox")
            cur.execute("CREATE DATABASE bench_outbox")
            cur.execute("ALTER SYSTEM SET fsync = on")
            cur.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the reload reaches every backend at its next command
        done = subprocess.run(
            [sys.executable, "-m", "bench.outbox_cost",
             "--dsn", make_dsn(database.url, dbname="bench_outbox"),
             "--rounds", str(config.outbox_rounds), "--seconds", str(config.outbox_seconds)],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-500:]}
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET fsync")
            cur.execute("SELECT pg_reload_conf()")
            cur.execute("DROP DATABASE IF EXISTS bench_outbox WITH (FORCE)")
        conn.close()


def wait_for_kinds(gens: LoadGenerators, kinds: tuple[str, ...], expected: int,
                   patience: float = 5.0, limit: float = 60.0) -> None:
    """Until the clients have ``expected`` updates of ``kinds``, or they stop coming."""
    started = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - started < limit:
        counts = gens.all({"cmd": "count"})
        got = sum(c["byKind"].get(k, 0) for c in counts for k in kinds)
        if got >= expected:
            return
        if got != seen:
            seen, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > patience:
            return
        time.sleep(0.1)


def run_writer(*args: str, timeout: float) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "bench.writer", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"writer failed: {done.stderr.strip()[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["cpuSeconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result
