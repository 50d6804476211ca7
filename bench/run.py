"""``make bench`` (``python -m bench.run``): measure relay and its peers in one run.

Starts everything itself on 127.0.0.1: an embedded PostgreSQL in a temporary directory, then
each server in turn — relay (gunicorn, N workers, as production), the ``node-ws`` peer and
the ``per-client-listen`` peer (bench/peers) — with load generators in separate processes
(``bench.loadgen``) and a separate notification writer (``bench.writer``). For each server:

* idle    — hold C authenticated connections; RSS of the server above its empty baseline;
* db      — PostgreSQL connections the server holds, and those backends' memory;
* steady  — R notifications/s for U users: delivered/s, commit→client latency, lost,
            duplicated, server CPU per 10k deliveries;
* burst   — one transaction notifying B distinct users: time until the last one has it;
* connect — handshakes/s (TCP, upgrade, JWT, ``connected`` received), connections reset.

Not in the default set, and run on its own (``--scenarios scale``, ``make bench-scale``):

* scale   — one relay with 100,000 users: memory, database cost from 1,000 to 100,000 users,
            steady delivery and a burst among them, a database link cut, a restart and its
            reconnect storm (``bench/scale.py``).

And once, against the database alone:

* notify  — notifying commits/s that PostgreSQL takes (concurrent writers, one NOTIFY per
            transaction; fsync off and on, and plain commits for contrast): the ceiling a
            NOTIFY-based design puts on the app's writes.
* outbox  — what relay's durable history costs each app write (``bench/outbox_cost.py``, fsync
            on): added commit latency against a plain ``pg_notify`` (p50/p99, one writer and
            several), the first transaction of a new connection, WAL and outbox bytes per
            message, cleanup's cost, failed writes (must be 0).

Prints one table and writes JSON to bench/results/, and the figures ``python -m relay size``
reads to bench/results/sizing.json (bench/figures.py). The chart of latency against load comes
from ``make bench-sweep`` (``bench/sweep.py``). docs/performance.md explains the figures and
records the results. The scenarios themselves are in ``bench.scenarios`` and what every
benchmark measures of the machine in ``bench.measure``, shared with ``bench.scale`` and
``bench.sweep``; this module chooses, runs and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import scale
from bench.figures import dig, write_sizing_figures
from bench.measure import database_version, git_commit, machine, raise_open_files, say, uptime_line
from bench.scenarios import (
    Config,
    burst,
    connect,
    notify_ceiling,
    open_connections,
    outbox_cost,
    split,
    steady,
    users,
)
from bench.servers import (
    Database,
    LoadGenerators,
    NodeServer,
    RelayServer,
    Server,
    install_peers,
    memory,
)

SCENARIOS = ("idle", "db", "steady", "burst", "connect", "notify", "outbox")
ALL_SCENARIOS = (*SCENARIOS, "scale")
SERVERS = ("relay", "node-ws", "per-client-listen")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> tuple[Config, Path, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, short phases (about a minute)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {', '.join(SCENARIOS)}; or scale, "
                             "alone")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated subset of {', '.join(SERVERS)}")
    parser.add_argument("-C", "--connections", type=int, help="idle connections (10000)")
    parser.add_argument("-R", "--rate", type=float, help="notifications/s committed (10000)")
    parser.add_argument("-U", "--users", type=int, help="users the steady load targets (1000)")
    parser.add_argument("--duration", type=float, help="steady measurement seconds (20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="steady warm-up seconds")
    parser.add_argument("--burst-users", type=int, help="users notified by the burst (10000)")
    parser.add_argument("--connect-seconds", type=float, help="connect scenario seconds (10)")
    parser.add_argument("--connect-concurrency", type=int, default=64,
                        help="handshakes in flight in the connect scenario")
    parser.add_argument("--workers", type=int,
                        help="relay's gunicorn workers (2; scale: 6 from 40,000 connections)")
    parser.add_argument("--loadgens", type=int,
                        help="load-generator processes (2; scale: one per 15,000 connections)")
    parser.add_argument("--per-tx", type=int, default=5, help="notifications per transaction")
    parser.add_argument("--writer-threads", type=int, default=4,
                        help="writer connections committing in parallel")
    parser.add_argument("--per-client-max", type=int,
                        help="cap on per-client-listen's connections (1000): each is a backend")
    parser.add_argument("--open-concurrency", type=int, default=100,
                        help="handshakes in flight per load generator while opening")
    parser.add_argument("--notify-writers", type=int, default=8,
                        help="notify scenario: connections committing in parallel")
    parser.add_argument("--notify-seconds", type=float,
                        help="notify scenario: seconds per variant (5)")
    parser.add_argument("--notify-dsn",
                        help="notify scenario: measure this database instead of the embedded "
                             "one (e.g. a Neon branch's direct endpoint; its settings as they are)")
    parser.add_argument("--outbox-rounds", type=int,
                        help="outbox scenario: rounds of the three kinds of write (1500)")
    parser.add_argument("--sizing-out", type=Path, default=RESULTS / "sizing.json",
                        help="where to write the figures python -m relay size reads")
    scale.add_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    servers = tuple(s for s in args.servers.split(",") if s)
    for name in scenarios:
        if name not in ALL_SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    if "scale" in scenarios and len(scenarios) > 1:
        parser.error("the scale scenario runs on its own (its sizes are not the others')")
    args.workers_given, args.loadgens_given = args.workers is not None, args.loadgens is not None
    args.workers = 2 if args.workers is None else args.workers
    args.loadgens = 2 if args.loadgens is None else args.loadgens
    for name in servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    connections = pick(args.connections, 10_000, 2_000)
    return Config(
        scenarios=scenarios, servers=servers, connections=connections,
        rate=pick(args.rate, 10_000.0, 10_000.0),
        users=min(connections, pick(args.users, 1_000, 500)),
        duration=pick(args.duration, 20.0, 4.0), warmup=args.warmup,
        burst_users=min(connections, pick(args.burst_users, 10_000, 2_000)),
        connect_seconds=pick(args.connect_seconds, 10.0, 3.0),
        connect_concurrency=args.connect_concurrency, workers=args.workers,
        loadgens=args.loadgens, per_tx=args.per_tx, writer_threads=args.writer_threads,
        per_client_max=pick(args.per_client_max, 1_000, 300),
        open_concurrency=args.open_concurrency, quick=quick,
        notify_writers=args.notify_writers,
        notify_seconds=pick(args.notify_seconds, 5.0, 2.0), notify_dsn=args.notify_dsn,
        outbox_rounds=pick(args.outbox_rounds, 1500, 300),
        outbox_seconds=pick(None, 10.0, 3.0),
    ), args.sizing_out, scale.config_from(args, quick) if "scale" in scenarios else None


def main(argv: list[str] | None = None) -> int:
    config, sizing_out, scale_config = parse_args(argv)
    if scale_config is not None:
        return main_scale(scale_config)
    raise_open_files(config.connections * 2 + 4096)
    if any(name != "relay" for name in config.servers):
        install_peers()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    results: dict[str, Any] = {"machine": machine(), "config": asdict(config),
                               "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                               "commit": git_commit(), "started": started, "servers": {}}
    database = Database(workdir, max(400, config.per_client_max + 100))
    try:
        say(f"PostgreSQL in {workdir} ...")
        database.start()
        results["machine"]["postgres"] = database_version(database.url)
        if "notify" in config.scenarios:
            say("[database] notify: notifying commits/s")
            results["database"] = {"notify": notify_ceiling(database, config)}
        if "outbox" in config.scenarios:
            say("[database] outbox: what the durable history costs a write (fsync on)")
            results.setdefault("database", {})["outbox"] = outbox_cost(database, config)
        for name in config.servers:
            results["servers"][name] = run_server(name, config, database, workdir)
    finally:
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.time() - started
    table = render_table(results)
    print(table)
    path = write_results(results, table)
    say(f"results: {path}")
    say(f"sizing figures: {write_sizing_figures(results, sizing_out, path.name)}")
    return 0


def main_scale(config: scale.ScaleConfig) -> int:
    """The scale scenario: relay alone, its own sizes, its own table (bench/scale.py)."""
    raise_open_files(config.connections * 2 + 4096)  # as far as the hard limit goes
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="relay-scale-"))
    results: dict[str, Any] = {"machine": machine(), "started": started,
                               "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                               "commit": git_commit(), "uptime": uptime_line()}
    database = Database(workdir, 400)
    try:
        say(f"PostgreSQL in {workdir} ...")
        database.start()
        results["machine"]["postgres"] = database_version(database.url)
        results["scale"] = scale.run_scale(config, database, workdir)
    finally:
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["loadAverageAfter"] = os.getloadavg()
    table = scale.render(results)
    print(table)
    say(f"results: {write_results(results, table, kind='scale')}")
    return 0


# ----- one server ------------------------------------------------------------------------------


def make_server(name: str, config: Config, workdir: Path, database_url: str,
                relay_env: dict[str, str] | None = None) -> Server:
    if name == "relay":
        return RelayServer(workdir, database_url, config.workers, config.connections,
                           env=relay_env)
    return NodeServer(workdir, database_url, name)


def run_server(name: str, config: Config, database: Database, workdir: Path) -> dict[str, Any]:
    limit = config.connections
    if name == "per-client-listen":
        limit = min(limit, config.per_client_max)
    out: dict[str, Any] = {"connectionsAsked": limit}
    server = make_server(name, config, workdir, database.url)
    say(f"[{name}] starting")
    server.start()
    gens = LoadGenerators(config.loadgens, server.port)
    try:
        # Warm the server's lazy paths (imports, first allocations), then take the baseline.
        gens.each(split(users(1, 20), len(gens), cmd="open", concurrency=10))
        gens.all({"cmd": "close"})
        time.sleep(2.0)
        baseline = memory(server.measured())
        out["baseline"] = baseline
        if isinstance(server, RelayServer):
            # What a machine's memory must hold before any client: every process, by role.
            out["baselineByRole"] = {role: [memory([p])["rss"] for p in processes]
                                     for role, processes in server.roles().items()}
        if set(config.scenarios) & {"idle", "db", "steady", "burst"}:
            say(f"[{name}] opening {limit} connections")
            out["open"] = open_connections(gens, limit, config)
            time.sleep(3.0)
            held = memory(server.measured())
            opened = out["open"]["opened"]
            out["idle"] = {
                "connections": opened, "baselineRss": baseline["rss"], "heldRss": held["rss"],
                "bytesPerConnection": (held["rss"] - baseline["rss"]) / max(1, opened),
                "ussBytesPerConnection": (held["uss"] - baseline["uss"]) / max(1, opened),
            }
            if "db" in config.scenarios:
                out["db"] = database.usage(server.application_name)
            if "steady" in config.scenarios:
                say(f"[{name}] steady: {config.rate:.0f}/s for {config.duration:.0f}s")
                out["steady"] = steady(gens, server, database, config, min(config.users, opened))
            if "burst" in config.scenarios:
                say(f"[{name}] burst")
                out["burst"] = burst(gens, server, database, min(config.burst_users, opened))
            gens.all({"cmd": "close"})
            time.sleep(2.0)
        if "connect" in config.scenarios:
            say(f"[{name}] connect: {config.connect_seconds:.0f}s")
            out["connect"] = connect(gens, server, config, limit)
    except Exception as exc:  # noqa: BLE001 - one peer failing must not lose the others
        out["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[{name}] failed: {out['error']}\n{server.log_tail(5)}")
    finally:
        gens.stop()
        server.stop()
    return out


# ----- environment -----------------------------------------------------------------------------


# ----- output ----------------------------------------------------------------------------------


# (label, path in a server's result, format, target text, "higher"/"lower" is better)
ROWS: list[tuple[str, tuple[str, ...], str, str, str]] = [
    ("idle: connections held", ("idle", "connections"), "{:,.0f}", "10,000", "higher"),
    ("idle: KB per connection (RSS)", ("idle", "bytesPerConnection"), "kb", "<= 12", "lower"),
    ("idle: baseline RSS MB", ("baseline", "rss"), "mb", "", "lower"),
    ("idle: opening rate /s", ("open", "perSecond"), "{:,.0f}", "", "higher"),
    ("connect: handshakes/s", ("connect", "perSecond"), "{:,.0f}", ">= 1,500", "higher"),
    ("connect: handshake p99 ms", ("connect", "handshakeP99Ms"), "{:,.1f}", "", "lower"),
    ("steady: committed/s", ("steady", "committedPerSecond"), "{:,.0f}", "10,000", "higher"),
    ("steady: delivered/s", ("steady", "deliveredPerSecond"), "{:,.0f}", ">= 10,000", "higher"),
    ("steady: latency p50 ms", ("steady", "latencyMs", "p50"), "{:,.1f}", "", "lower"),
    ("steady: latency p99 ms", ("steady", "latencyMs", "p99"), "{:,.1f}", "<= 25", "lower"),
    ("steady: latency max ms", ("steady", "latencyMs", "max"), "{:,.1f}", "", "lower"),
    ("steady: lost", ("steady", "lost"), "{:,.0f}", "0", "lower"),
    ("steady: duplicated", ("steady", "duplicated"), "{:,.0f}", "0", "lower"),
    ("steady: server CPU s / 10k", ("steady", "serverCpuPer10k"), "{:,.2f}", "", "lower"),
    ("steady: PostgreSQL CPU s / 10k", ("steady", "postgresCpuPer10k"), "{:,.2f}", "", "lower"),
    ("burst: users", ("burst", "users"), "{:,.0f}", "10,000", "higher"),
    ("burst: s until the last has it", ("burst", "lastSeconds"), "{:,.3f}", "<= 0.5", "lower"),
    ("burst: lost", ("burst", "lost"), "{:,.0f}", "0", "lower"),
    ("burst: server CPU s", ("burst", "serverCpuSeconds"), "{:,.2f}", "", "lower"),
    ("db: PostgreSQL connections", ("db", "connections"), "{:,.0f}", "1", "lower"),
    ("db: their backends' memory MB (USS)", ("db", "backendUss"), "mb", "", "lower"),
    ("db: their backends' memory MB (RSS)", ("db", "backendRss"), "mb", "", "lower"),
    ("client CPU, busiest loadgen (steady)", ("steady", "clientCpu", "maxCoreShare"), "pct", "",
     "lower"),
    ("client CPU, busiest loadgen (connect)", ("connect", "clientCpu", "maxCoreShare"), "pct",
     "", "lower"),
    ("client loop lag p99 ms (steady)", ("steady", "clientLagMs", "p99"), "{:,.1f}", "",
     "lower"),
    ("machine busy, all processes (steady)", ("steady", "machineBusy"), "pct", "", "lower"),
    ("machine busy, all processes (connect)", ("connect", "machineBusy"), "pct", "", "lower"),
]


def _format(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "kb":
        return f"{value / 1000:,.1f}"
    if style == "mb":
        return f"{value / 1e6:,.1f}"
    if style == "pct":
        return f"{value * 100:.0f}%"
    return style.format(value)


def render_table(results: dict[str, Any]) -> str:
    servers = list(results["servers"])
    header = ["", *servers, "target"]
    if "relay" in servers and "node-ws" in servers:
        header.append("relay : node-ws")
    rows = [header]
    for label, path, style, target, _better in ROWS:
        values = [dig(results["servers"][name], *path) for name in servers]
        if all(v is None for v in values):
            continue
        row = [label, *(_format(v, style) for v in values), target]
        if len(header) > len(servers) + 2:
            ours = dig(results["servers"]["relay"], *path)
            theirs = dig(results["servers"]["node-ws"], *path)
            ok = isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs
            row.append(f"{ours / theirs:.2f}x" if ok else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows if servers else []):  # --servers '': the notify lines
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                           strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = []
    for name in servers:
        result = results["servers"][name]
        if "error" in result:
            notes.append(f"{name}: {result['error']}")
        if name == "per-client-listen" and result.get("connectionsAsked", 0) < results[
                "config"]["connections"]:
            notes.append(f"per-client-listen measured at {result['connectionsAsked']:,} "
                         "connections (one PostgreSQL backend each; --per-client-max)")
        failures = dig(result, "open", "failures")
        if failures:
            notes.append(f"{name}: failed opens {failures}")
    m = results["machine"]
    lines.append("")
    lines.append(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ramGiB']} GiB, "
                 f"PostgreSQL {m.get('postgres')}, Python {m['python']}, Node {m['node']}")
    lines.extend(f"note: {n}" for n in notes)
    lines.extend(notify_lines(results.get("database", {}).get("notify")))
    lines.extend(outbox_lines(results.get("database", {}).get("outbox")))
    return "\n".join(lines)


def notify_lines(notify: dict[str, Any] | None) -> list[str]:
    """The notify scenario, one line per database setting."""
    if not notify:
        return []
    lines = []
    for key, label in (("fsyncOff", "fsync off"), ("fsyncOn", "fsync on"),
                       ("external", "--notify-dsn")):
        pair = notify.get(key)
        if not pair:
            continue
        n, p = pair["notify"], pair["plain"]
        lines.append(
            f"notify ({label}): {n['writers']} writers, one NOTIFY per transaction: "
            f"{n['commitsPerSecond']:,.0f} commits/s (p99 {n['latencyMs']['p99'] or 0:.1f} ms); "
            f"without NOTIFY {p['commitsPerSecond']:,.0f}/s (p99 "
            f"{p['latencyMs']['p99'] or 0:.1f} ms)")
        nw, pw, rw = pair.get("notifyWrite"), pair.get("plainWrite"), pair.get("publishWrite")
        if nw and pw:
            lines.append(
                f"notify ({label}), each transaction also writing a row: "
                f"{nw['commitsPerSecond']:,.0f} commits/s (p99 {nw['latencyMs']['p99'] or 0:.1f} "
                f"ms); the row alone {pw['commitsPerSecond']:,.0f}/s (p99 "
                f"{pw['latencyMs']['p99'] or 0:.1f} ms)"
                + (f"; a row and relay_publish {rw['commitsPerSecond']:,.0f}/s (p99 "
                   f"{rw['latencyMs']['p99'] or 0:.1f} ms)" if rw else ""))
    return lines


def outbox_lines(outbox: dict[str, Any] | None) -> list[str]:
    """The outbox scenario: what relay_publish adds to a write over a plain pg_notify."""
    if not outbox:
        return []
    if "error" in outbox:
        return [f"outbox: failed: {outbox['error']}"]
    lines = []
    for key in ("single", "concurrent"):
        part = outbox.get(key)
        if not part:
            continue
        label = "1 writer" if key == "single" else f"{part['writers']} writers"
        n, p = part["notify"], part["publish"]
        lines.append(
            f"outbox ({label}, fsync {outbox['fsync']}): commit p50/p99 ms: pg_notify "
            f"{n['p50']:.2f}/{n['p99']:.2f}, relay_publish {p['p50']:.2f}/{p['p99']:.2f}: "
            f"added {part['addedP50Ms']:+.2f}/{part['addedP99Ms']:+.2f} (target p99 <= +1), "
            f"median pair {part['medianPairDifferenceMs']:+.2f}")
    first = outbox.get("firstTransaction") or {}
    if first.get("notify") and first.get("publish"):
        lines.append(f"outbox: first transaction of a new connection p50 ms: pg_notify "
                     f"{first['notify']['p50']:.1f}, relay_publish {first['publish']['p50']:.1f}")
    cpu = outbox.get("backendCpu")
    if cpu:
        used = cpu["usPerTransaction"]
        lines.append(f"outbox: backend CPU per transaction us: base {used['base']:.0f}, pg_notify "
                     f"{used['notify']:.0f}, relay_publish {used['publish']:.0f} "
                     f"(added {cpu['addedUs']:+.0f}), five relay_publish "
                     f"{used.get('publish5', 0):.0f} (added per further message "
                     f"{cpu.get('addedUsPerFurtherMessage', 0):+.0f})")
    ceiling = outbox.get("commitCeiling")
    if ceiling:
        lines.append(f"outbox: {ceiling['writers']} writers, a row and one message per "
                     "transaction: "
                     f"relay_publish {ceiling['publish']['commitsPerSecond']:,.0f} commits/s, "
                     f"pg_notify {ceiling['notify']['commitsPerSecond']:,.0f}/s")
    cleanup = outbox.get("cleanup") or {}
    batch = (cleanup.get("batchMs") or {}).get("p50")
    lines.append(
        f"outbox: {outbox['walBytesPerMessage']:,} WAL bytes and {outbox['outboxBytesPerRow']:,} "
        f"table bytes per message (payload {outbox['payloadBytes']} bytes); cleanup "
        + (f"{batch:.1f} ms per {cleanup['batchRows']:,} rows, " if batch else
           f"{cleanup.get('msPer1000Rows')} ms per 1,000 rows, ")
        + f"{cleanup.get('walBytesPerRow')} WAL bytes per row; failed writes "
        f"{outbox['failedWrites']} (target 0)")
    return lines


def write_results(results: dict[str, Any], table: str, kind: str = "bench") -> Path:
    """bench/results/<kind>-<start time>.json, copied to latest.json (<kind>-latest.json for
    another command than this one's, e.g. ``bench.sweep``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(results["started"]))
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps({**results, "table": table}, indent=2))
    latest = "latest.json" if kind == "bench" else f"{kind}-latest.json"
    (RESULTS / latest).write_text(path.read_text())
    return path


if __name__ == "__main__":
    sys.exit(main())
