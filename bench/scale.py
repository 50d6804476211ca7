"""The ``scale`` scenario of ``make bench``: one relay instance with 100,000 users.

``python -m bench.run --scenarios scale`` (``make bench-scale``) runs it on its own: its sizes
are not the other scenarios'. One relay (``--workers`` gunicorn workers, production config,
each worker with bench/loopprobe.py's loop-lag probe), ``--loadgens`` load-generator
processes, each on its own loopback source address, and the embedded PostgreSQL. In order:

* open    — users 1…``--scale-first`` (1,000), then the rest up to C (100,000): all
            connected, how many failed, and the RSS of the listener and workers per connection
            from 1,000 to C, with the kernel's socket memory (/proc/net/sockstat, Slab)
            beside it (both ends of every connection live on this machine);
* db      — at 1,000 and again at C connected users: CPU of relay's PostgreSQL backend (the
            listener's LISTEN session) and of the listener process per notification, for
            ``--db-notifications`` notifications to random connected users; the listener's
            CPU while idle; the channels it LISTENs;
* steady  — ``--scale-rate`` (10,000) notifications/s to random users among C: lost, p99,
            where the time and each side's CPU go; then, when its p99 missed 25 ms, the same
            at ``--steady-sweep`` rates (descending; default half, 30%, 20%, 10% and 5% of it,
            ``--steady-sweep-seconds`` each) until one meets it: the largest rate this
            machine sustains with p99 <= 25 ms, and each side's CPU per message there;
* burst   — one transaction publishing to ``--scale-burst`` (50,000) distinct random users:
            time until the last one has it;
* cut     — ``pg_terminate_backend`` of the listener's backend while a probe writer commits
            a notification every few ms: time until a notification committed after the cut
            reaches its client (the database answers at once: it was never down), and until
            every client has had its ``resync``;
* drain   — (only without storm) the relay is stopped as a deploy stops it, and not started
            again: how long the drain took, how its clients were closed, the loop meanwhile;
* storm   — the relay is stopped as a deploy stops it (SIGTERM: the drain closes every client
            with 1012 over ``RELAY_DRAIN_SECONDS``), then started again on the same port; every
            client reconnects as the JS client does (full-jitter backoff from
            client/src/backoff.js, the token and its ``resume`` cursors in the first message).
            Handshakes/s, all re-attached within how long, the workers' worst loop stall (the
            probe) and how late the pings came (the clients), a probe writer's delivery latency
            meanwhile, and afterwards what the new instance holds (connections, users, open
            files, memory) against what the clients hold: nothing leaked.

``--user-channels`` sets ``RELAY_USER_CHANNELS`` (``listen``: every user's channels are
LISTENed, the notifications are ``pg_notify`` on them, as an app's own trigger does; ``off`` /
``auto``: ``python -m relay db install`` first, and the notifications go through
``relay_publish``). The table reports what relay LISTENed, so a relay that does not know the
setting shows it. Every phase is bounded in time; everything listens on loopback.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import resource
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from bench.exitwatch import ExitWatch, log_timeline
from bench.figures import dig
from bench.healthwatch import HealthWatch
from bench.loopprobe import census, worst_lag
from bench.measure import busy_share, client_cpu, machine_busy, merge_counts, percentiles, say
from bench.scenarios import Config, burst, run_writer, split, steady, users, wait_for_kinds
from bench.servers import (
    ROOT,
    Database,
    LoadGenerators,
    RelayServer,
    cpu_seconds,
    memory,
)
from bench.stormwatch import (
    CpuWatch,
    accept_queue,
    listen_overflows,
    net_per_handshake,
    relay_counters,
    who_ran_out,
)

PHASES = ("open", "db", "steady", "burst", "cut", "storm", "drain")
MODES = ("off", "listen", "auto")


@dataclasses.dataclass
class ScaleConfig:
    connections: int = 100_000
    first: int = 1_000
    workers: int = 6
    loadgens: int = 7
    user_channels: str = "off"
    phases: tuple[str, ...] = PHASES
    open_concurrency: int = 100
    db_notifications: int = 10_000
    db_rate: float = 2_000.0
    rate: float = 10_000.0
    duration: float = 20.0
    warmup: float = 2.0
    per_tx: int = 5
    writer_threads: int = 4
    burst_users: int = 50_000
    probe_rate: float = 200.0
    cut_limit: float = 180.0
    drain_seconds: float = 10.0
    storm_limit: float = 240.0
    storm_hold: float = 25.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    relay_env: tuple[tuple[str, str], ...] = ()  # more of relay's settings (--relay-env)
    sweep: tuple[float, ...] = ()  # steady rates tried, descending, when the first missed
    sweep_seconds: float = 8.0
    quick: bool = False


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("scale scenario (--scenarios scale)")
    group.add_argument("--user-channels", choices=MODES, default="off",
                       help="RELAY_USER_CHANNELS for the scale scenario")
    group.add_argument("--scale-phases", default=",".join(PHASES),
                       help=f"comma-separated subset of {', '.join(PHASES)} (open always runs)")
    group.add_argument("--scale-first", type=int, help="the small stage's users (1000)")
    group.add_argument("--scale-rate", type=float, help="steady notifications/s (10000)")
    group.add_argument("--scale-burst", type=int, help="users of the burst (50000)")
    group.add_argument("--db-notifications", type=int,
                       help="notifications per database-cost measurement (10000)")
    group.add_argument("--db-rate", type=float, default=2_000.0,
                       help="their rate per second")
    group.add_argument("--drain-seconds", type=float, default=10.0,
                       help="RELAY_DRAIN_SECONDS of the relay the storm stops")
    group.add_argument("--steady-sweep", metavar="R,R,…",
                       help="steady rates tried, descending, until p99 <= 25 ms (default: "
                            "50%%, 30%%, 20%%, 10%%, 5%% of --scale-rate); 0: none")
    group.add_argument("--steady-sweep-seconds", type=float, default=8.0,
                       help="measured seconds of each sweep rate")
    group.add_argument("--relay-env", action="append", default=[], metavar="NAME=VALUE",
                       help="one more RELAY_ setting for the relay under test (repeatable)")


def config_from(args: Any, quick: bool) -> ScaleConfig:
    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    connections = pick(args.connections, 100_000, 5_000)
    phases = tuple(p for p in args.scale_phases.split(",") if p)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"bench: unknown scale phase(s) {', '.join(unknown)}")
    hard = open_files_hard_limit()
    # A load generator holds one descriptor per connection, plus a few of its own.
    per_loadgen = hard - 200
    loadgens = args.loadgens if args.loadgens_given else max(1, -(-connections // 15_000))
    if connections > loadgens * per_loadgen:
        raise SystemExit(f"bench: {connections:,} connections need more than {loadgens} load "
                         f"generators at {per_loadgen:,} descriptors each (--loadgens)")
    workers = args.workers if args.workers_given else (6 if connections > 40_000 else 2)
    return ScaleConfig(
        connections=connections, first=min(connections, pick(args.scale_first, 1_000, 500)),
        workers=workers, loadgens=loadgens, user_channels=args.user_channels,
        phases=("open", *(p for p in phases if p != "open")),
        open_concurrency=args.open_concurrency,
        db_notifications=pick(args.db_notifications, 10_000, 2_000), db_rate=args.db_rate,
        rate=pick(args.scale_rate, 10_000.0, 2_000.0),
        duration=pick(args.duration, 20.0, 5.0), warmup=args.warmup, per_tx=args.per_tx,
        writer_threads=args.writer_threads,
        burst_users=min(connections, pick(args.scale_burst, 50_000, connections // 2)),
        cut_limit=60.0 if quick else 180.0, drain_seconds=args.drain_seconds,
        storm_limit=120.0 if quick else 240.0, storm_hold=25.0,
        relay_env=tuple(_setting(item) for item in args.relay_env),
        sweep=_sweep(args.steady_sweep, pick(args.scale_rate, 10_000.0, 2_000.0)),
        sweep_seconds=args.steady_sweep_seconds, quick=quick)


def _sweep(asked: str | None, rate: float) -> tuple[float, ...]:
    if asked is None:
        return tuple(rate * share for share in (0.5, 0.3, 0.2, 0.1, 0.05))
    rates = [float(r) for r in asked.split(",") if r.strip()]
    return tuple(sorted((r for r in rates if r > 0), reverse=True))


def _setting(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.startswith("RELAY_"):
        raise SystemExit(f"bench: --relay-env takes RELAY_NAME=VALUE, not {item!r}")
    return name, value


def open_files_hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


# ----- the run -------------------------------------------------------------------------------


def run_scale(cfg: ScaleConfig, database: Database, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"config": dataclasses.asdict(cfg), "phases": {}}
    publish = prepare_database(cfg, database)
    out["publish"] = publish
    # A worker needs a descriptor per WebSocket plus ~64 of its own (gunicorn.conf.py), under
    # the hard limit that nobody here may raise (trap 12).
    worker_connections = min(open_files_hard_limit() - 100,
                             max(10_000, -(-cfg.connections * 5 // 4 // cfg.workers)))
    out["workerConnections"] = worker_connections
    # Each load generator's one source address stands for thousands of clients, which in
    # production come from as many addresses: the per-address share of a worker's pending
    # connections (128) would answer most of a storm's handshakes 429 (39,780 of them
    # at 40,000 clients on 2 workers), which no real storm meets.
    env = {"RELAY_USER_CHANNELS": cfg.user_channels,
           "RELAY_DRAIN_SECONDS": f"{cfg.drain_seconds:g}",
           "RELAY_MAX_PENDING_PER_ADDRESS": "0"}
    cores = os.cpu_count() or 1
    if cfg.workers > cores:
        # Production runs one worker per vCPU, each serving RELAY_HANDSHAKE_CONCURRENCY (256)
        # handshakes at once; here more workers than cores share them (the open-files limit),
        # so each gets its share of that per-core figure.
        env["RELAY_HANDSHAKE_CONCURRENCY"] = str(max(1, 256 * cores // cfg.workers))
    env.update(dict(cfg.relay_env))
    out["relayEnv"] = env
    server = RelayServer(workdir, database.url, cfg.workers, cfg.connections,
                         worker_connections=worker_connections, env=env,
                         probe_dir=workdir / "probe-1")
    steady_config = Config(
        scenarios=("steady",), servers=("relay",), connections=cfg.connections, rate=cfg.rate,
        users=cfg.connections, duration=cfg.duration, warmup=cfg.warmup, burst_users=0,
        connect_seconds=0.0, connect_concurrency=0, workers=cfg.workers,
        loadgens=cfg.loadgens, per_tx=cfg.per_tx, writer_threads=cfg.writer_threads,
        per_client_max=0, open_concurrency=cfg.open_concurrency, publish=publish,
        spread="random")
    say(f"[scale] relay: {cfg.workers} workers x {worker_connections:,} connections, "
            f"RELAY_USER_CHANNELS={cfg.user_channels}, publishing with {publish}")
    servers = [server]  # every relay started, for the final stop whatever happens
    phase.probe_dir = workdir / "probe-1"
    server.start(timeout=120)
    gens = LoadGenerators(cfg.loadgens, server.port)
    phases = out["phases"]
    try:
        gens.each(split(users(1, 20), len(gens), cmd="open", concurrency=10))
        gens.all({"cmd": "close"})
        time.sleep(2.0)
        baseline = {"memory": memory(server.measured()), "sockstat": sockstat(),
                    "meminfo": meminfo(), "openFiles": open_files(server)}
        out["baseline"] = baseline

        say(f"[scale] opening users 1…{cfg.first:,}")
        with phase(phases, "openFirst") as record:
            record.update(open_users(gens, 1, cfg.first, cfg))
        time.sleep(2.0)
        if "db" in cfg.phases:
            say(f"[scale] database cost at {cfg.first:,} users")
            with phase(phases, "dbFirst") as record:
                record.update(db_cost(gens, server, database, cfg, cfg.first, publish))
        before_rest = memory(server.measured())
        say(f"[scale] opening users {cfg.first + 1:,}…{cfg.connections:,}")
        with phase(phases, "openRest") as record:
            record.update(open_users(gens, cfg.first + 1, cfg.connections - cfg.first, cfg))
        time.sleep(5.0)
        phases["idle"] = idle_figures(server, gens, baseline, before_rest, cfg)
        held = phases["idle"]["held"]
        say(f"[scale] heartbeats: {held:,} idle connections for 25 s")
        with phase(phases, "heartbeat") as record:
            record.update(heartbeat(gens, server, 25.0))
        if "db" in cfg.phases:
            say(f"[scale] database cost at {held:,} users")
            with phase(phases, "dbAll") as record:
                record.update(db_cost(gens, server, database, cfg, cfg.connections, publish))
        if "steady" in cfg.phases:
            settle(gens, database, phases, "beforeSteady")
            say(f"[scale] steady: {cfg.rate:,.0f}/s to random users among "
                    f"{cfg.connections:,}")
            with phase(phases, "steady") as record:
                record.update(steady(gens, server, database, steady_config,
                                         cfg.connections))
            record.update(net_of_idle(record, phases.get("heartbeat", {})))
            if not _meets(record):
                phases["steadySweep"] = steady_sweep(gens, server, database, steady_config,
                                                     cfg, phases)
        if "burst" in cfg.phases:
            settle(gens, database, phases, "beforeBurst")
            say(f"[scale] burst: one transaction to {cfg.burst_users:,} users")
            with phase(phases, "burst") as record:
                record.update(burst(gens, server, database, cfg.burst_users,
                                        among=cfg.connections, publish=publish,
                                        limit=120.0))
        if "cut" in cfg.phases:
            settle(gens, database, phases, "beforeCut")
            say("[scale] database link cut")
            with phase(phases, "cut") as record:
                record.update(link_cut(gens, server, database, cfg, publish))
        if "drain" in cfg.phases and "storm" not in cfg.phases:
            settle(gens, database, phases, "beforeDrain")
            say("[scale] SIGTERM: the drain alone")
            with phase(phases, "drain") as record:
                drain_only(gens, server, cfg, workdir, record)
        if "storm" in cfg.phases:
            settle(gens, database, phases, "beforeStorm")
            say("[scale] restart and reconnect storm")
            with phase(phases, "storm") as record:
                server = storm(gens, servers, database, cfg, publish, baseline, workdir,
                               record)
    except Exception as exc:  # noqa: BLE001 - what was measured so far is still reported
        out["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[scale] failed: {out['error']}\n{server.log_tail(10)}")
    finally:
        logged = [line for started in servers for line in warnings_of(started)]
        out["relayWarningCount"] = len(logged)
        out["relayWarnings"] = logged if len(logged) <= 60 else logged[:30] + logged[-30:]
        try:
            gens.all({"cmd": "close"})  # a quick stop: nothing left to drain
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        gens.stop()
        for started in servers:
            started.stop()
    return out


STEADY_P99_MS = 25.0  # issue 12's target


def _meets(record: dict[str, Any]) -> bool:
    p99 = dig(record, "latencyMs", "p99")
    return p99 is not None and p99 <= STEADY_P99_MS


def steady_sweep(gens: LoadGenerators, server: RelayServer, database: Database,
                 steady_config: Config, cfg: ScaleConfig,
                 phases: dict[str, Any]) -> dict[str, Any]:
    """The steady phase again at lower rates, highest first, until one keeps p99 <= 25 ms:
    the rate this machine sustains beside its clients, and what each side costs there."""
    steps: list[dict[str, Any]] = []
    largest = None
    for rate in cfg.sweep:
        settle(gens, database, phases, f"beforeSweep{rate:.0f}")
        say(f"[scale] steady sweep: {rate:,.0f}/s")
        holder: dict[str, Any] = {}
        with phase(holder, "step") as record:
            record.update(steady(gens, server, database, dataclasses.replace(
                steady_config, rate=rate, duration=cfg.sweep_seconds), cfg.connections))
        steps.append({"rate": rate, **{key: record.get(key) for key in (
            "committedPerSecond", "deliveredPerSecond", "latencyMs", "lost", "seqGaps",
            "cpuPerMessageUs", "stages", "machineBusy", "writerWorstLagS")}})
        if _meets(record):
            largest = record.get("committedPerSecond")
            break
    return {"steps": steps, "largestRateMet": largest, "perTx": cfg.per_tx}


class phase:  # noqa: N801 - used as a context manager, reads as a statement
    """Records a phase's wall clock, the machine's load around it and the worst stall of
    relay's worker loops during it (bench/loopprobe.py) into ``record``."""

    probe_dir: Path | None = None  # the running relay's probe directory

    def __init__(self, phases: dict[str, Any], name: str) -> None:
        self.record: dict[str, Any] = {}
        phases[name] = self.record

    def __enter__(self) -> dict[str, Any]:
        self._busy = machine_busy()
        self._started = time.time()
        self.record["loadAverageBefore"] = os.getloadavg()[0]
        return self.record

    def __exit__(self, *exc: object) -> None:
        self.record["phaseSeconds"] = time.time() - self._started
        self.record["machineBusy"] = busy_share(self._busy)
        self.record["loadAverageAfter"] = os.getloadavg()[0]
        if phase.probe_dir is not None and "workerLoop" not in self.record:
            self.record["workerLoop"] = worst_lag(phase.probe_dir, self._started, time.time())


def settle(gens: LoadGenerators, database: Database, phases: dict[str, Any], name: str,
           limit: float = 120.0) -> None:
    """Wait until the previous phase's notifications are all out: PostgreSQL's queue back to
    (almost) empty and nothing arriving at the clients for 2 s. A server that fell behind
    (``listen`` at 100,000 users) would otherwise charge its backlog to the next phase."""
    import psycopg2

    started = time.monotonic()
    conn = psycopg2.connect(database.url, application_name="bench")
    conn.autocommit = True
    quiet, last, usage = 0, -1, 1.0
    try:
        while time.monotonic() - started < limit:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_notification_queue_usage()")
                usage = float(cur.fetchone()[0])
            got = sum(sum(c["byKind"].values()) for c in gens.all({"cmd": "count"}))
            quiet = quiet + 1 if got == last else 0
            last = got
            if usage < 0.001 and quiet >= 2:
                break
            time.sleep(1.0)
    finally:
        conn.close()
    seconds = time.monotonic() - started
    phases[name] = {"settleSeconds": seconds, "queueUsage": usage,
                    "settled": usage < 0.001 and quiet >= 2}
    if seconds > 5:
        say(f"[scale] {name}: the previous phase's backlog took {seconds:.0f} s to settle "
                f"(queue usage {usage:.1%})")


def warnings_of(server: RelayServer) -> list[str]:
    """relay's warning and error log lines (its logs are JSON lines by default)."""
    found = []
    for name in ("stdout.log", "stderr.log"):
        path = server.workdir / name
        if not path.exists():
            continue
        with path.open(errors="replace") as lines:
            for line in lines:
                if '"level": "warning"' in line or '"level": "error"' in line:
                    found.append(line.strip()[:400])
    return found


def prepare_database(cfg: ScaleConfig, database: Database) -> str:
    """Install relay's SQL for ``off``/``auto``; the way the writer must publish."""
    if cfg.user_channels == "listen":
        return "notify"
    done = subprocess.run([sys.executable, "-m", "relay", "db", "install"], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": database.url},
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"relay db install failed: {done.stderr.strip()[-400:]}")
    if not function_exists(database.url, "relay_publish"):
        raise RuntimeError(
            f"RELAY_USER_CHANNELS={cfg.user_channels} needs relay_publish(), and this "
            "checkout's `python -m relay db install` does not install it: measure "
            "--user-channels listen, or a relay that has the shared channel")
    return "publish"


def function_exists(url: str, name: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(url, application_name="bench")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_proc WHERE proname = %s", (name,))
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def open_users(gens: LoadGenerators, first: int, count: int, cfg: ScaleConfig
               ) -> dict[str, Any]:
    cpu0 = gens.cpu()
    started = time.monotonic()
    replies = gens.each(split(users(first, count), len(gens), cmd="open",
                                  concurrency=cfg.open_concurrency, timeout=60.0))
    seconds = time.monotonic() - started
    opened = sum(r["opened"] for r in replies)
    return {"asked": count, "opened": opened,
            "failures": merge_counts(r["failures"] for r in replies),
            "seconds": seconds, "perSecond": opened / seconds if seconds else 0.0,
            "handshakeP99Ms": max((r["handshakeMs"].get("p99", 0.0) for r in replies),
                                  default=0.0),
            "clientCpu": client_cpu(cpu0, gens.cpu(), seconds)}


def idle_figures(server: RelayServer, gens: LoadGenerators, baseline: dict[str, Any],
                 before_rest: dict[str, int], cfg: ScaleConfig) -> dict[str, Any]:
    held = sum(c["held"] for c in gens.all({"cmd": "count"}))
    now = memory(server.measured())
    socks, mem = sockstat(), meminfo()
    health = server.health() or {}
    listener = health.get("listener") or {}
    added = held - cfg.first
    per_worker = [memory([p])["rss"] for p in server.roles()["worker"]]
    return {
        "held": held, "asked": cfg.connections,
        "reportedConnections": health.get("totalConnections"),
        "reportedUsers": health.get("connectedUsers"),
        # What the listener's database session LISTENs, and the mode relay says it runs in
        # (older relays reported neither: their "channels" were all LISTENed).
        "channelsListened": listener.get("listened", listener.get("channels")),
        "channelsRouted": listener.get("channels"),
        "userChannels": listener.get("userChannels"),
        "rss": now["rss"], "baselineRss": baseline["memory"]["rss"],
        # From the small stage to C: the figure per connection, without the first stage's
        # history (its notifications) nor the warm-up's lazy allocations.
        "bytesPerConnection": (now["rss"] - before_rest["rss"]) / added if added else None,
        "ussBytesPerConnection": (now["uss"] - before_rest["uss"]) / added if added else None,
        "bytesPerConnectionFromEmpty": (now["rss"] - baseline["memory"]["rss"]) / held
        if held else None,
        "workerRss": per_worker,
        "listenerRss": [memory([p])["rss"] for p in server.roles()["listener"]],
        "sockstat": socks,
        "kernelSocketBytesPerConnection":
            (socks["tcpMemPages"] - baseline["sockstat"]["tcpMemPages"]) * 4096 / held
            if held else None,
        "slabBytesPerConnection": (mem["Slab"] - baseline["meminfo"]["Slab"]) / held
        if held else None,
        "openFiles": open_files(server),
    }


def heartbeat(gens: LoadGenerators, server: RelayServer, seconds: float) -> dict[str, Any]:
    """Idle connections for ``seconds`` (more than a ping interval): every one is pinged and
    answers; how late the pings came, and what the workers spent on it."""
    gens.all({"cmd": "reset"})
    workers = server.roles()["worker"]
    cpu0 = cpu_seconds(workers)
    time.sleep(seconds)
    cpu = cpu_seconds(workers) - cpu0
    stats = gens.all({"cmd": "stats"})
    late = array("f")
    for reply in stats:
        late.frombytes(base64.b64decode(reply["pingLateMs"]))
    return {"seconds": seconds, "pings": len(late),
            "pingLateMs": percentiles(sorted(late)),
            "closes": merge_counts(r["closes"] for r in stats),
            "workersCoreShare": cpu / seconds,
            "workerCpuUsPerPing": cpu / len(late) * 1e6 if late else None}


def net_of_idle(steady: dict[str, Any], heartbeat: dict[str, Any]) -> dict[str, Any]:
    """The steady phase's server CPU per 10,000 deliveries without what its idle connections
    cost meanwhile (the heartbeat phase's rate, over the phase's wall time): at 100,000 users
    the pings alone are a third of a core, which a phase that lasts 30 s would otherwise
    charge to its deliveries (bench.delivery_cost). Deliveries are the updates that arrived:
    a phase that ended with a backlog still charges it the CPU spent on what never came."""
    share, delivered = heartbeat.get("workersCoreShare"), steady.get("delivered")
    seconds, cpu = steady.get("phaseSeconds"), steady.get("serverCpuSeconds")
    if not (share and delivered and seconds and cpu is not None):
        return {}
    idle = share * seconds
    return {"idleCpuSeconds": idle, "serverCpuPer10kNetOfIdle": (cpu - idle) / delivered * 1e4}


def db_cost(gens: LoadGenerators, server: RelayServer, database: Database, cfg: ScaleConfig,
            users: int, publish: str) -> dict[str, Any]:
    """CPU of the listener's PostgreSQL backend and of the listener per notification, with
    ``users`` connected; every notification to a random one of them."""
    listener = server.roles()["listener"]
    pids = database.backends(server.application_name)
    backend = [psutil_process(pid) for pid in pids]
    # The listener's own CPU while nothing is published: what its connections cost it alone.
    idle0 = cpu_seconds(listener)
    time.sleep(3.0)
    idle_share = (cpu_seconds(listener) - idle0) / 3.0
    gens.all({"cmd": "reset"})
    backend0, listener0 = cpu_seconds(backend), cpu_seconds(listener)
    workers0 = cpu_seconds(server.roles()["worker"])
    count = cfg.db_notifications
    written = run_writer(
        "steady", "--dsn", database.url, "--rate", str(cfg.db_rate), "--users", str(users),
        "--duration", f"{count / cfg.db_rate:.3f}", "--warmup", "0", "--per-tx", "5",
        "--threads", "2", "--spread", "random", "--kind", "d", "--publish", publish,
        timeout=count / cfg.db_rate + 120)
    wait_for_kinds(gens, ("d",), written["committed"], patience=10.0, limit=120.0)
    backend_cpu = cpu_seconds(backend) - backend0
    listener_cpu = cpu_seconds(listener) - listener0
    workers_cpu = cpu_seconds(server.roles()["worker"]) - workers0
    counts = gens.all({"cmd": "count"})
    delivered = sum(c["byKind"].get("d", 0) for c in counts)
    committed = written["committed"]
    health = server.health() or {}
    return {
        "users": users, "committed": committed, "delivered": delivered,
        "committedPerSecond": written["rate"], "backends": len(pids),
        "backendCpuSeconds": backend_cpu, "listenerCpuSeconds": listener_cpu,
        "backendUsPerNotification": backend_cpu / committed * 1e6 if committed else None,
        "listenerUsPerNotification": listener_cpu / committed * 1e6 if committed else None,
        "workersUsPerNotification": workers_cpu / committed * 1e6 if committed else None,
        "listenerIdleCoreShare": idle_share,
        "channelsListened": _listened(health),
    }


def _listened(health: dict[str, Any]) -> Any:
    listener = health.get("listener") or {}
    return listener.get("listened", listener.get("channels"))


def psutil_process(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def start_writer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.writer", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_writer(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def probe_writer(database: Database, cfg: ScaleConfig, publish: str,
                 seconds: float) -> subprocess.Popen[str]:
    """A notification every few ms to a random user, kind ``p``, for at most ``seconds``."""
    return start_writer("steady", "--dsn", database.url, "--rate", str(cfg.probe_rate),
                        "--users", str(cfg.connections), "--duration", f"{seconds:.0f}",
                        "--warmup", "0", "--per-tx", "1", "--threads", "2",
                        "--spread", "random", "--kind", "p", "--publish", publish,
                        "--seed", str(int(time.time())))


def probe_pairs(stats: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Every probe update the clients got: (commit ts, arrival), in arrival order."""
    values = array("d")
    for reply in stats:
        values.frombytes(base64.b64decode(reply["probes"]))
    return sorted(zip(values[0::2], values[1::2], strict=True), key=lambda pair: pair[1])


def link_cut(gens: LoadGenerators, server: RelayServer, database: Database, cfg: ScaleConfig,
             publish: str) -> dict[str, Any]:
    import psycopg2

    held = sum(c["held"] for c in gens.all({"cmd": "reset"}))
    writer = probe_writer(database, cfg, publish, cfg.cut_limit + 30)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the probes flow before the cut
            time.sleep(0.5)
            if sum(c["byKind"].get("p", 0) for c in gens.all({"cmd": "count"})) >= 20:
                break
        else:
            raise RuntimeError("no probe notification arrived before the cut")
        pids = database.backends(server.application_name)
        conn = psycopg2.connect(database.url, application_name="bench")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cut_at = time.time()
                for pid in pids:
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            conn.close()
        deadline = time.monotonic() + cfg.cut_limit
        resynced = 0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            counts = gens.all({"cmd": "count"})
            resynced = sum(c["other"].get("resync", 0) for c in counts)
            if _recovered(gens, cut_at) and (
                    resynced >= held
                    # the durable history resyncs nobody: once flowing, nothing more to wait for
                    or (resynced == 0 and time.time() - cut_at > OUTAGE_STARTS_WITHIN)):
                break
        time.sleep(1.0)
    finally:
        stop_writer(writer)
    stats = gens.all({"cmd": "stats"})
    pairs = probe_pairs(stats)
    after = [(ts, arrived) for ts, arrived in pairs if ts > cut_at]
    gap = outage(pairs, cut_at)
    last_resync = max((r["otherLast"].get("resync", 0.0) for r in stats), default=0.0)
    first_resync = min((r["otherFirst"].get("resync", float("inf")) for r in stats),
                       default=float("inf"))
    health = server.health() or {}
    return {
        "held": held, "backendsTerminated": len(pids), "cutAt": cut_at,
        # The database answers at once (only the session was ended), so the time is taken from
        # the cut: the end of the longest silence of the probes' arrivals around it (a probe
        # committed in the moment after the cut can still reach the dying session's
        # listener), and how many probes committed meanwhile never arrived (no replay).
        "flowingAgainSeconds": gap["endsAfterCutSeconds"] if gap else None,
        "outage": gap,
        "firstProbeAfterCutSeconds": after[0][1] - cut_at if after else None,
        "firstProbeAfterCutCommittedSeconds": after[0][0] - cut_at if after else None,
        "resynced": sum(r["other"].get("resync", 0) for r in stats),
        "firstResyncSeconds": first_resync - cut_at if resynced else None,
        "lastResyncSeconds": last_resync - cut_at if resynced else None,
        "probesAfterCut": len(after),
        "probeLatencyAfterMs": percentiles(sorted((a - t) * 1000 for t, a in after)),
        "databaseReconnects": (health.get("listener") or {}).get("databaseReconnects"),
        "gaveUpAfter": None if resynced >= held else cfg.cut_limit,
    }


OUTAGE_STARTS_WITHIN = 5.0  # s after the cut: a later silence is the load's, not the cut's


def outage(pairs: list[tuple[float, float]], cut_at: float) -> dict[str, float] | None:
    """The longest silence in the probes' arrivals that ends after the cut and begins around
    it (from 1 s before to ``OUTAGE_STARTS_WITHIN`` after): (commit ts, arrival) pairs in
    arrival order. Its length, when it ended (seconds after the cut), and the probes
    committed during it. With nothing interrupted (the durable history catches up at once)
    it is just the probes' usual spacing."""
    arrivals = [arrived for _, arrived in pairs]
    best: tuple[float, float] | None = None
    for before, after in zip(arrivals, arrivals[1:], strict=False):
        if after > cut_at and cut_at - 1.0 < before <= cut_at + OUTAGE_STARTS_WITHIN and (
                best is None or after - before > best[1] - best[0]):
            best = (before, after)
    if best is None:
        return None
    return {"seconds": best[1] - best[0], "endsAfterCutSeconds": best[1] - cut_at,
            "startsAfterCutSeconds": best[0] - cut_at}


def _recovered(gens: LoadGenerators, cut_at: float) -> bool:
    stats = gens.all({"cmd": "stats"})
    return any(ts > cut_at for ts, _ in probe_pairs(stats))


def drain_only(gens: LoadGenerators, server: RelayServer, cfg: ScaleConfig, workdir: Path,
               record: dict[str, Any]) -> None:
    """SIGTERM, as a deploy stops a machine: how the drain closed the clients, and when."""
    held = sum(c["held"] for c in gens.all({"cmd": "reset"}))
    exits = ExitWatch(server.roles())
    term_at = time.time()
    record["held"] = held
    record["drainExitSeconds"] = server.terminate(timeout=cfg.drain_seconds + 30)
    exited_at = time.time()
    # Where the seconds went: each process's exit, and the stop's log lines, after SIGTERM.
    record["exits"] = exits.stop(term_at)
    record["stopLog"] = [row for name in ("stderr.log", "stdout.log")
                         for row in log_timeline(server.workdir / name, term_at)]
    record["drainLoop"] = worst_lag(workdir / "probe-1", term_at, exited_at)
    stats = gens.all({"cmd": "stats"})
    first = min((r["closeFirst"] for r in stats if r["closeFirst"]), default=term_at)
    record["drained"] = {"closes": merge_counts(r["closes"] for r in stats),
                         "firstDrop": first - term_at,
                         "lastDrop": max((r["closeLast"] for r in stats), default=0.0) - term_at}


def storm(gens: LoadGenerators, servers: list[RelayServer], database: Database,
          cfg: ScaleConfig, publish: str, baseline: dict[str, Any], workdir: Path,
          record: dict[str, Any]) -> RelayServer:
    """Stop relay as a deploy does, start it again; every client reconnects with resume."""
    server = servers[-1]
    before = gens.all({"cmd": "reset"})
    held = sum(c["held"] for c in before)
    record["held"] = held
    # Waits as a browser's: its TCP connect and opening handshake have no timeout of the JS
    # client's (the OS gives up on SYNs after about two minutes; 60 s here), and once open
    # the client's watchdog gives `connected` 2.5 heartbeats (50 s). A shorter wait only
    # threw away handshakes the server had done.
    gens.each([{"cmd": "storm", "base": cfg.backoff_base, "cap": cfg.backoff_cap,
                "timeout": 60.0, "answerTimeout": 50.0, "seed": index + 1}
               for index in range(len(gens))])
    old_tree = server.tree()
    # As a health checker sees it: the main port (beside the clients) and the internal one.
    watch = HealthWatch({"main": server.port, "internal": server.internal_port})
    term_at = time.time()
    say(f"[scale] SIGTERM: draining {held:,} clients over {cfg.drain_seconds:g} s")
    record["drainExitSeconds"] = server.terminate(timeout=cfg.drain_seconds + 30)
    exited_at = time.time()
    record["oldProcessesLeft"] = sum(1 for p in old_tree if p.is_running()
                                     and p.status() != "zombie")
    record["drainLoop"] = worst_lag(workdir / "probe-1", term_at, exited_at)
    fresh = RelayServer(workdir, database.url, cfg.workers, cfg.connections,
                        worker_connections=server.worker_connections, env=server.env,
                        probe_dir=workdir / "probe-2", port=server.port, instance="-2",
                        internal_port=server.internal_port)
    servers.append(fresh)
    phase.probe_dir = workdir / "probe-2"
    try:
        fresh.start(timeout=120)
    except Exception:
        record["health"] = watch.stop(term_at, term_at)
        raise
    ready_at = time.time()
    say(f"[scale] relay back after {ready_at - term_at:.1f} s; waiting for {held:,} "
            "clients")
    writer = probe_writer(database, cfg, publish, cfg.storm_limit + cfg.storm_hold + 30)
    roles = fresh.roles()
    cpu = CpuWatch({"worker": roles["worker"], "listener": roles["listener"],
                    "master": roles["master"] + roles["supervisor"],
                    "postgres": database.processes(),
                    **{f"loadgen{i}": [p] for i, p in enumerate(gens.processes)}})
    try:
        deadline = time.monotonic() + cfg.storm_limit
        status: list[dict[str, Any]] = []
        timeline = []  # one row a second: see "timeline" below
        overflows = listen_overflows()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            status = gens.all({"cmd": "storm_status"})
            back = sum(s["held"] for s in status)
            in_flight = sum(s.get("inFlight", 0) for s in status)
            waiting = sum(s.get("waiting", 0) for s in status)
            shares = cpu.sample()
            dropped = listen_overflows()
            timeline.append([round(time.time() - ready_at, 1), back, in_flight, waiting,
                             round(sum(shares.get(r, 0.0) for r in
                                       ("worker", "listener", "master")), 2),
                             round(sum(v for r, v in shares.items()
                                       if r.startswith("loadgen")), 2),
                             shares.get("postgres", 0.0), accept_queue(fresh.port),
                             dropped - overflows])
            overflows = dropped
            if back >= held and not in_flight and not waiting:
                break
        done_at = time.time()
        cpu_totals = cpu.totals()
        counters = relay_counters(fresh.internal_port)
        say(f"[scale] {sum(s['held'] for s in status):,} back after "
                f"{done_at - ready_at:.1f} s; holding {cfg.storm_hold:g} s for the pings")
        time.sleep(cfg.storm_hold)
        idle = cpu.idle_since_last()
    finally:
        stop_writer(writer)
        record["health"] = watch.stop(term_at, ready_at)
    reports = gens.all({"cmd": "storm_stop"})
    stats = gens.all({"cmd": "stats"})
    by_second: dict[int, int] = {}
    for report in reports:
        for second, count in report["bySecond"].items():
            by_second[int(second)] = by_second.get(int(second), 0) + count
    reattached = sum(r["reattached"] for r in reports)
    first_ok = min((r["firstOk"] for r in reports if r["firstOk"]), default=0.0)
    last_ok = max((r["lastOk"] for r in reports), default=0.0)
    busiest = max(by_second.values(), default=0)
    handshake = array("f")
    away = array("f")
    ping_late = array("f")
    for report in reports:
        handshake.frombytes(base64.b64decode(report["handshakeMs"]))
        away.frombytes(base64.b64decode(report["awaySeconds"]))
    for reply in stats:
        ping_late.frombytes(base64.b64decode(reply["pingLateMs"]))
    probes = [(t, a) for t, a in probe_pairs(stats) if t >= ready_at]
    # What the new instance holds, against what the clients hold.
    health = fresh.health() or {}
    now_held = sum(s["held"] for s in gens.all({"cmd": "count"}))
    files = open_files(fresh)
    mem = memory(fresh.measured())
    record.update({
        "termAt": term_at, "exitedAt": exited_at, "readyAt": ready_at, "doneAt": done_at,
        "downSeconds": ready_at - term_at,
        "drained": {"closes": merge_counts(r["closes"] for r in reports),
                    "firstDrop": min((r["firstDrop"] for r in reports if r["firstDrop"]),
                                     default=0.0) - term_at,
                    "lastDrop": max((r["lastDrop"] for r in reports), default=0.0) - term_at},
        "reattached": reattached, "resumed": sum(r["resumed"] for r in reports),
        "abandoned": sum(r["abandoned"] for r in reports),
        "attempts": sum(r["attempts"] for r in reports),
        "failures": merge_counts(r["failures"] for r in reports),
        "attemptsNeeded": merge_counts(r["attemptsNeeded"] for r in reports),
        "allBackSeconds": done_at - ready_at if now_held >= held else None,
        "lastBackAfterReadySeconds": last_ok - ready_at if last_ok else None,
        "lastBackAfterTermSeconds": last_ok - term_at if last_ok else None,
        "handshakesPerSecond": reattached / (last_ok - first_ok) if last_ok > first_ok else None,
        # The server's rate while most clients wanted in: from the first reconnect until 90%
        # were back (the last few are spread out by their own backoff, not held by relay).
        "handshakesPerSecond90": bulk_rate(by_second, held, first_ok),
        "busiestSecond": busiest,
        "bySecond": [[second - int(ready_at), by_second[second]] for second in sorted(by_second)],
        "handshakeMs": percentiles(sorted(handshake)),
        # [s after ready, back, in flight, waiting, relay cores, load generators' cores,
        # PostgreSQL's cores, relay's accept queue, SYNs the kernel dropped for a full accept
        # queue]: each second's CPU beside the clients' progress.
        "timeline": timeline,
        "cpu": {**cpu_totals, "perSecond": cpu.seconds},
        "budget": who_ran_out(cpu_totals, reattached, os.cpu_count() or 1),
        # Each role's share of a core during the hold (all back, no handshakes), and its CPU
        # per handshake beyond that share.
        "idleCores": idle,
        "netCpuMsPerHandshake": net_per_handshake(cpu_totals, idle, reattached),
        # The same while most clients wanted in (until 90% were back): the tail's seconds
        # carry the held connections' heartbeats and few handshakes.
        "budget90": _budget90(cpu, timeline, held),
        # relay's own account of the handshakes it started (until all were back).
        "relayCounters": counters,
        "peakInFlight": max((t[2] for t in timeline), default=0),
        "awaySeconds": percentiles(sorted(away)),
        "workerLoop": worst_lag(workdir / "probe-2", ready_at, time.time()),
        # What the collector tracks in the workers once all are back (the hold's census).
        "gcCensus": census(workdir / "probe-2", done_at, time.time()),
        "pingLateMs": percentiles(sorted(ping_late)),
        "probeLatencyMs": percentiles(sorted((a - t) * 1000 for t, a in probes)),
        "after": {
            "clientsHeld": now_held, "reportedConnections": health.get("totalConnections"),
            "reportedUsers": health.get("connectedUsers"),
            "channelsListened": _listened(health),
            "openFiles": files,
            "openFilesBeyondConnections": files["worker"] - now_held,
            "rss": mem["rss"],
            "bytesPerConnectionFromEmpty": (mem["rss"] - baseline["memory"]["rss"]) / now_held
            if now_held else None,
        },
    })
    return fresh


def _budget90(cpu: CpuWatch, timeline: list[list[Any]], held: int) -> dict[str, Any] | None:
    for index, row in enumerate(timeline):
        if row[1] >= 0.9 * held:
            return {**who_ran_out(cpu.until(index), row[1], os.cpu_count() or 1),
                    "secondsAfterReady": row[0], "back": row[1]}
    return None


def bulk_rate(by_second: dict[int, int], held: int, first_ok: float,
              share: float = 0.9) -> float | None:
    """Reconnects per second from the first one until ``share`` of ``held`` were back."""
    target = share * held
    done = 0
    for second in sorted(by_second):
        done += by_second[second]
        if done >= target:
            seconds = second + 1 - first_ok
            return done / seconds if seconds > 0 else None
    return None


# ----- the machine ---------------------------------------------------------------------------


def sockstat() -> dict[str, int]:
    """/proc/net/sockstat: sockets in use and the TCP stack's buffer memory (pages)."""
    fields: dict[str, int] = {}
    try:
        lines = Path("/proc/net/sockstat").read_text().splitlines()
    except OSError:
        return {"tcpMemPages": 0}
    for line in lines:
        name, _, rest = line.partition(":")
        values = rest.split()
        for key, value in zip(values[0::2], values[1::2], strict=False):
            fields[f"{name.strip().lower()}_{key}"] = int(value)
    return {"socketsUsed": fields.get("sockets_used", 0), "tcpInUse": fields.get("tcp_inuse", 0),
            "tcpOrphan": fields.get("tcp_orphan", 0), "tcpTimeWait": fields.get("tcp_tw", 0),
            "tcpAlloc": fields.get("tcp_alloc", 0), "tcpMemPages": fields.get("tcp_mem", 0)}


def meminfo() -> dict[str, int]:
    """/proc/meminfo's kernel slab (socket structures live there), in bytes."""
    found: dict[str, int] = {"Slab": 0}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Slab", "SUnreclaim", "MemAvailable"):
                found[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found


def open_files(server: RelayServer) -> dict[str, int]:
    roles = server.roles()
    return {role: sum(_fds(p) for p in processes) for role, processes in roles.items()}


def _fds(process: Any) -> int:
    try:
        return int(process.num_fds())
    except Exception:  # noqa: BLE001 - a process that went away holds none
        return 0


# ----- the table -----------------------------------------------------------------------------


def _ratio(high: Any, low: Any) -> float | None:
    if isinstance(high, (int, float)) and isinstance(low, (int, float)) and low:
        return high / low
    return None


def _verdict(value: Any, target: float, better: str) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    met = value <= target if better == "lower" else value >= target
    return "met" if met else "NOT met"


def rows(scale: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met?) for the table."""
    p = scale.get("phases", {})
    out: list[tuple[str, str, str, str]] = []

    def add(label: str, value: Any, style: str = "{:,.0f}", target: str = "",
            verdict: str = "") -> None:
        out.append((label, "-" if value is None else (style.format(value) if isinstance(
            value, (int, float)) else str(value)), target, verdict))

    idle = p.get("idle", {})
    failures = merge_counts([dig(p, "openFirst", "failures") or {},
                                 dig(p, "openRest", "failures") or {}])
    if idle:
        asked = idle.get("asked", 0)
        add("idle: connections held", idle.get("held"), target=f"{asked:,}",
            verdict="met" if idle.get("held") == asked and not failures else "NOT met")
        add("idle: failed opens", sum(failures.values()), target="0",
            verdict="met" if not failures else "NOT met")
        add("idle: opening rate /s", dig(p, "openRest", "perSecond"))
        add("idle: worst worker loop stall while opening ms",
            dig(p, "openRest", "workerLoop", "worstMs"), "{:,.0f}")
        per = idle.get("bytesPerConnection")
        add("idle: RSS per connection KB (1k → all)", per / 1000 if per else None, "{:,.2f}",
            "<= 5", _verdict(per / 1000 if per else None, 5.0, "lower"))
        whole = idle.get("bytesPerConnectionFromEmpty")
        add("idle: RSS per connection KB (from empty)", whole / 1000 if whole else None,
            "{:,.2f}")
        kernel = idle.get("kernelSocketBytesPerConnection")
        add("idle: kernel TCP buffers KB per connection", kernel / 1000 if kernel is not None
            else None, "{:,.2f}")
        slab = idle.get("slabBytesPerConnection")
        add("idle: kernel slab KB per connection (both ends)", slab / 1000 if slab is not None
            else None, "{:,.2f}")
        add("idle: channels LISTENed", idle.get("channelsListened"))
        add("idle: user channels (relay's mode)", idle.get("userChannels") or "-")
    beat = p.get("heartbeat", {})
    if beat:
        add("heartbeat: pings answered in 25 s", beat.get("pings"))
        add("heartbeat: ping lateness p99 / max ms",
            _pair(dig(beat, "pingLateMs", "p99"), dig(beat, "pingLateMs", "max")))
        add("heartbeat: worst worker loop stall ms", dig(beat, "workerLoop", "worstMs"),
            "{:,.0f}", "a few ms")
        add("heartbeat: longest full GC in a worker ms",
            dig(beat, "workerLoop", "worstFullCollectionMs"), "{:,.0f}")
        add("heartbeat: longest wait of a ready greenlet ms",
            dig(beat, "workerLoop", "worstReadyWaitMs"), "{:,.0f}")
        add("heartbeat: workers' CPU (share of a core)", beat.get("workersCoreShare"), "{:.1%}")
        add("heartbeat: connections closed meanwhile", sum((beat.get("closes") or {}).values()),
            target="0", verdict="met" if not beat.get("closes") else "NOT met")
    first, whole = p.get("dbFirst", {}), p.get("dbAll", {})
    if first or whole:
        for key, label in (("backendUsPerNotification", "PostgreSQL backend"),
                           ("listenerUsPerNotification", "listener")):
            low, high = first.get(key), whole.get(key)
            ratio = _ratio(high, low)
            add(f"db: {label} µs/notification at {first.get('users', 0):,}", low, "{:,.1f}")
            add(f"db: {label} µs/notification at {whole.get('users', 0):,}", high, "{:,.1f}")
            add(f"db: {label} growth (x)", ratio, "{:,.2f}", "<= 1.5 (off)",
                _verdict(ratio, 1.5, "lower"))
        add("db: listener idle CPU at all users", whole.get("listenerIdleCoreShare"), "{:.1%}")
        lost = None
        if whole:
            lost = whole.get("committed", 0) - whole.get("delivered", 0)
        add("db: notifications not delivered", lost)
    steady = p.get("steady", {})
    if steady:
        add("steady: committed/s", steady.get("committedPerSecond"))
        add("steady: delivered/s", steady.get("deliveredPerSecond"))
        add("steady: lost", steady.get("lost"), target="0",
            verdict=_verdict(steady.get("lost"), 0, "lower"))
        add("steady: latency p50 ms", dig(steady, "latencyMs", "p50"), "{:,.1f}")
        add("steady: latency p99 ms", dig(steady, "latencyMs", "p99"), "{:,.1f}", "<= 25",
            _verdict(dig(steady, "latencyMs", "p99"), 25.0, "lower"))
        add("steady: latency max ms", dig(steady, "latencyMs", "max"), "{:,.1f}")
        add("steady: server CPU s / 10k", steady.get("serverCpuPer10k"), "{:,.2f}")
        add("steady: the same, net of idle heartbeats", steady.get("serverCpuPer10kNetOfIdle"),
            "{:,.2f}")
        add("steady: worst worker loop stall ms", dig(steady, "workerLoop", "worstMs"),
            "{:,.0f}")
        # Where the time goes before the clients (bench/scenarios.py steady's stages).
        for key, label in (("writerLateMs", "writer's start late against its schedule"),
                           ("writerRoundTripMs", "writer's statement (publish + COMMIT)"),
                           ("builtToNumberedMs", "ts -> numbered under the commit lock"),
                           ("builtToListenerAtMostMs", "ts -> the listener's dispatch, at most")):
            low, high = dig(steady, "stages", key, "p50"), dig(steady, "stages", key, "p99")
            add(f"steady: {label} p50 / p99 ms",
                None if low is None or high is None else f"{low:,.1f} / {high:,.1f}")
        per_message = steady.get("cpuPerMessageUs") or {}
        for role, micros in per_message.items():
            add(f"steady: CPU µs per committed message, {role}", micros, "{:,.1f}")
        if per_message:
            # Why the asked rate does or does not fit: every side's CPU at the rate reached,
            # times the rate asked, against the machine's cores.
            total = sum(per_message.values())
            asked = dig(scale, "config", "rate") or 0
            add(f"steady: cores all sides need for {asked:,.0f}/s at that cost",
                total * asked / 1e6, "{:,.2f}", f"{os.cpu_count() or 1} here")
    sweep = p.get("steadySweep", {})
    for step in sweep.get("steps", []):
        p50, p99 = dig(step, "latencyMs", "p50") or 0, dig(step, "latencyMs", "p99") or 0
        add(f"steady sweep {step['rate']:,.0f}/s asked: committed/s, p50 / p99 ms",
            f"{step.get('committedPerSecond') or 0:,.0f}, {p50:,.1f} / {p99:,.1f}")
        cpu = step.get("cpuPerMessageUs") or {}
        add(f"steady sweep {step['rate']:,.0f}/s: CPU µs/message (all sides)",
            ", ".join(f"{role} {micros:,.0f}" for role, micros in cpu.items()) or None)
    if sweep:
        add(f"steady: largest rate with p99 <= 25 ms ({sweep.get('perTx')} per transaction)",
            sweep.get("largestRateMet"), target="10,000",
            verdict=_verdict(sweep.get("largestRateMet"), 10_000, "higher"))
    burst = p.get("burst", {})
    if burst:
        add("burst: users", burst.get("users"))
        add("burst: s until the last has it", burst.get("lastSeconds"), "{:,.3f}", "<= 2",
            _verdict(burst.get("lastSeconds"), 2.0, "lower"))
        add("burst: lost", burst.get("lost"), target="0",
            verdict=_verdict(burst.get("lost"), 0, "lower"))
        # Where the time goes, from the COMMIT's start: its end, the listener's scan of the
        # outbox (its first page, its last row handed on), the first and last arrivals.
        add("burst: s COMMIT took", burst.get("commitSeconds"), "{:,.3f}")
        add("burst: s until the listener's first page", dig(burst, "catchUp", "firstPageSeconds"),
            "{:,.3f}")
        add("burst: s until the listener handed on the last",
            dig(burst, "catchUp", "lastHandedOnSeconds"), "{:,.3f}")
        add("burst: s until the first has it", burst.get("firstSeconds"), "{:,.3f}")
        for role, seconds in sorted((burst.get("cpuSplit") or {}).items()):
            add(f"burst: CPU s, {role}", seconds, "{:,.2f}")
    cut = p.get("cut", {})
    if cut:
        add("cut: s until updates flow again", cut.get("flowingAgainSeconds"), "{:,.2f}",
            "<= 2 (off)", _verdict(cut.get("flowingAgainSeconds"), 2.0, "lower"))
        add("cut: longest silence of the probes s", dig(cut, "outage", "seconds"), "{:,.2f}")
        add("cut: s until the last client's resync", cut.get("lastResyncSeconds"), "{:,.2f}")
        add("cut: clients told to resync", cut.get("resynced"))
    st = p.get("storm", {})
    drained = st or p.get("drain", {})
    if drained:
        add("drain: s from SIGTERM to exit", drained.get("drainExitSeconds"), "{:,.1f}",
            f"<= {scale.get('config', {}).get('drain_seconds', 10):g} + 3")
        closes = dig(drained, "drained", "closes") or {}
        add("drain: clients closed 1012", closes.get("1012", 0),
            target=f"{drained.get('held', 0):,}",
            verdict="met" if closes.get("1012", 0) == drained.get("held") else "NOT met")
        add("drain: last close, s after SIGTERM", dig(drained, "drained", "lastDrop"), "{:,.1f}")
        add("drain: worst worker loop stall ms",
            max(dig(drained, "drainLoop", "worstMs") or 0.0,
                dig(drained, "drainLoop", "worstReadyWaitMs") or 0.0)
            if drained.get("drainLoop") else None, "{:,.0f}")
        add("drain: longest full GC in a worker ms",
            dig(drained, "drainLoop", "worstFullCollectionMs"), "{:,.0f}")
        for role, exits in (drained.get("exits") or {}).items():
            if role == "cpu":
                for name, used in exits.items():
                    add(f"drain: {name} CPU s from SIGTERM to its exit",
                        " + ".join(f"{s:.2f}" for s in used.values()))
                continue
            seconds = [s for s in exits.values() if s is not None]
            if seconds:
                add(f"drain: {role} exited, s after SIGTERM",
                    f"{min(seconds):.2f}" if len(seconds) == 1
                    else f"{min(seconds):.2f}–{max(seconds):.2f}")
    if st:
        add("storm: s down (SIGTERM → new relay ready)", st.get("downSeconds"), "{:,.1f}")
        for port in ("main", "internal"):
            seen = dig(st, "health", port) or {}
            if seen:
                add(f"storm: /health on the {port} port, 200 within 5 s after ready",
                    f"{seen.get('ok', 0)} of {seen.get('polls', 0)}",
                    target="all" if port == "internal" else "",
                    verdict=("met" if seen.get("ok") == seen.get("polls") else "NOT met")
                    if port == "internal" else "")
                add(f"storm: /health on the {port} port, longest without a 200 s",
                    seen.get("longestWithoutOkSeconds"), "{:,.1f}")
        add("storm: handshakes/s until 90% back", st.get("handshakesPerSecond90"),
            target=">= 1,500",
            verdict=_verdict(st.get("handshakesPerSecond90"), 1500, "higher"))
        add("storm: handshakes/s first → last", st.get("handshakesPerSecond"))
        add("storm: busiest second", st.get("busiestSecond"))
        add("storm: all back, s after ready", st.get("lastBackAfterReadySeconds"), "{:,.1f}",
            "<= 120", _verdict(st.get("lastBackAfterReadySeconds"), 120.0, "lower")
            if st.get("allBackSeconds") is not None else "NOT met")
        add("storm: reattached / held", f"{st.get('reattached', 0):,} / {st.get('held', 0):,}")
        budget = st.get("budget90") or st.get("budget", {})
        add("storm: relay's CPU ms per completed handshake (until 90% back)",
            budget.get("relayCpuMsPerHandshake"), "{:,.2f}")
        net = st.get("netCpuMsPerHandshake")
        if net:
            add("storm: CPU ms per handshake beyond idle: workers / listener / PostgreSQL",
                " / ".join(f"{net.get(k, 0):.2f}" for k in ("worker", "listener", "postgres")))
        add("storm: cores used by relay / load generators / PostgreSQL",
            " / ".join(f"{budget.get(k, 0):.2f}" for k in
                       ("relayCoresUsed", "loadgenCoresUsed", "postgresCoresUsed"))
            if budget else None)
        waits = dig(st, "cpu", "runQueueSeconds") or {}
        add("storm: s runnable but waiting for a CPU: workers / listener / load generators",
            " / ".join(f"{v:,.0f}" for v in (
                waits.get("worker", 0), waits.get("listener", 0),
                sum(v for k, v in waits.items() if k.startswith("loadgen"))))
            if waits else None)
        add("storm: cores relay needs for 1,500/s", budget.get("relayCoresFor1500PerSecond"),
            "{:,.2f}", f"<= {budget.get('cores', '?')}")
        counters = st.get("relayCounters", {})
        if counters:
            failures = counters.get("relay_auth_failures", {})
            add("storm: relay upgraded / connected / evicted pending / auth timeout",
                " / ".join(f"{v:,.0f}" for v in (
                    counters.get("relay_websocket_upgrades", 0),
                    counters.get("relay_websocket_connected", 0),
                    failures.get("evicted while pending", 0),
                    failures.get("auth timeout", 0))))
        fails = st.get("failures", {})
        add("storm: client attempts / failed (top reasons)",
            f"{st.get('attempts', 0):,} / {sum(fails.values()):,} " + ", ".join(
                f"{k}: {v:,}" for k, v in sorted(fails.items(), key=lambda i: -i[1])[:3]))
        # The target reads both waits: a timer's (pings, deliveries) and a ready greenlet's.
        stall = max(dig(st, "workerLoop", "worstMs") or 0.0,
                    dig(st, "workerLoop", "worstReadyWaitMs") or 0.0) if st.get(
            "workerLoop") else None
        add("storm: worst worker loop stall ms", stall, "{:,.0f}", "<= 500",
            _verdict(stall, 500.0, "lower"))
        objects = (st.get("gcCensus") or {}).get("objectsPerConnection")
        if objects:
            add("storm: objects the collector tracks per held connection", objects)
        add("storm: longest full GC in a worker ms",
            dig(st, "workerLoop", "worstFullCollectionMs"), "{:,.0f}")
        add("storm: longest wait of a ready greenlet ms",
            dig(st, "workerLoop", "worstReadyWaitMs"), "{:,.0f}")
        add("storm: ping lateness p99 / max ms",
            _pair(dig(st, "pingLateMs", "p99"), dig(st, "pingLateMs", "max")))
        add("storm: delivery p99 ms meanwhile (probe)", dig(st, "probeLatencyMs", "p99"),
            "{:,.1f}")
        after = st.get("after", {})
        leaked = (after.get("reportedConnections"), after.get("clientsHeld"))
        add("storm: relay's connections / clients' after", f"{leaked[0]} / {leaked[1]}",
            verdict="met" if leaked[0] == leaked[1] and leaked[0] is not None else "NOT met")
        add("storm: open files beyond connections (workers)",
            after.get("openFilesBeyondConnections"))
        per = after.get("bytesPerConnectionFromEmpty")
        add("storm: RSS per connection KB after (from empty)", per / 1000 if per else None,
            "{:,.2f}")
    return out


def _pair(a: Any, b: Any) -> str | None:
    if a is None or b is None:
        return None
    return f"{a:,.0f} / {b:,.0f}"


def render(results: dict[str, Any]) -> str:
    scale = results.get("scale", {})
    table = [("", "relay", "target", "")] + rows(scale)
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = []
    for index, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                 row[3].ljust(widths[3])]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    cfg = scale.get("config", {})
    m = results["machine"]
    lines.append("")
    lines.append(f"C = {cfg.get('connections', 0):,} over {cfg.get('workers')} workers "
                 f"(RELAY_WORKER_CONNECTIONS={scale.get('workerConnections', 0):,}) and "
                 f"{cfg.get('loadgens')} load generators; RELAY_USER_CHANNELS="
                 f"{cfg.get('user_channels')}, published with "
                 f"{'relay_publish' if scale.get('publish') == 'publish' else 'pg_notify'}"
                 + "".join(f"; {name}={value}"
                           for name, value in (scale.get("relayEnv") or {}).items()
                           if name != "RELAY_USER_CHANNELS"))
    lines.append(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ramGiB']} GiB, "
                 f"PostgreSQL {m.get('postgres')}, Python {m['python']}; load average before "
                 f"{m['loadAverage'][0]:.2f}, after {results.get('loadAverageAfter', [0])[0]:.2f}")
    loads = [f"{name} {rec.get('loadAverageBefore', 0):.1f}→{rec.get('loadAverageAfter', 0):.1f}"
             f" ({rec.get('machineBusy', 0):.0%} busy)"
             for name, rec in scale.get("phases", {}).items() if "machineBusy" in rec]
    if loads:
        lines.append("load average 1 min (machine busy) by phase: " + ", ".join(loads))
    for name, rec in scale.get("phases", {}).items():
        if rec.get("settled") is False:
            lines.append(f"note: {name}: the previous phase's notifications were still being "
                         f"delivered after {rec['settleSeconds']:.0f} s (PostgreSQL's queue "
                         f"{rec['queueUsage']:.1%} full)")
    warnings = scale.get("relayWarnings") or []
    if warnings:
        lines.append(f"note: relay logged {scale.get('relayWarningCount', len(warnings))} "
                     "warning/error lines (in the JSON), "
                     f"the first: {warnings[0][:200]}")
    if "error" in scale:
        lines.append(f"note: {scale['error']}")
    return "\n".join(lines)
