"""The figures ``python -m relay size`` reads, taken from one ``make bench`` run.

``sizing_figures(results)`` turns ``bench.run``'s results into the format of
relay/sizing_figures.json: each figure with its value, unit, the run it came from and how it
was derived, and the run's date, commit and machine. ``write_sizing_figures`` writes it to
bench/results/sizing.json. A figure the run did not measure (a scenario or a server left
out, a server that failed) is left out of the file, and the calculator keeps the shipped
value for it (relay/sizing_data.py overlays the files figure by figure), so a new scenario's
figures slot in by adding keys here and in ``relay.sizing_data.FIGURE_KEYS``.

To ship new defaults after a full run: copy bench/results/sizing.json over
relay/sizing_figures.json (docs/cost.md, "Re-measuring").
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def dig(result: dict[str, Any], *path: str) -> Any:
    """``result[path[0]][path[1]]…``, or ``None`` where any step is missing."""
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _server(results: dict[str, Any], name: str) -> dict[str, Any]:
    """A server's results, or nothing when it failed (its partial figures are not trusted)."""
    result = results.get("servers", {}).get(name) or {}
    return {} if "error" in result else result


def sizing_figures(results: dict[str, Any], results_file: str = "") -> dict[str, Any]:
    started = results.get("started", time.time())
    run_id = "bench-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    config = results.get("config", {})
    figures: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, unit: str, how: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            figures[key] = {"value": value, "unit": unit, "run": run_id, "how": how}

    relay = _server(results, "relay")
    put("idleBytesPerConnection", dig(relay, "idle", "bytesPerConnection"), "bytes",
        "relay, idle: (RSS of the listener and workers holding C connections − their RSS "
        "before) / C")
    roles = relay.get("baselineByRole") or {}
    if roles.get("master") and roles.get("listener") and roles.get("worker"):
        put("baselineFixedRssBytes",
            sum(roles["master"]) + sum(roles.get("supervisor", [])) + sum(roles["listener"]),
            "bytes", "relay, before any client: RSS of the master, supervisor and listener")
        put("baselineWorkerRssBytes", sum(roles["worker"]) / len(roles["worker"]), "bytes",
            "relay, before any client: RSS of one worker (the mean)")
    cpu = dig(relay, "steady", "serverCpuPer10k")
    put("cpuSecondsPerDelivery", cpu / 10_000 if cpu else None, "seconds",
        "relay, steady: CPU of every relay process per delivered update")
    handshakes = dig(relay, "connect", "perSecond")
    workers = config.get("workers") or 0
    put("handshakesPerSecondPerWorker", handshakes / workers if handshakes and workers else None,
        "per second", "relay, connect: handshakes/s / workers (load generators on the same "
        "machine)")
    # PostgreSQL's CPU for the notifications themselves: its processes other than the writer's
    # backends (relay's backend reading the queue, the WAL and background work) per message,
    # plus what a NOTIFY adds to the writer's transaction (the outbox scenario's server-side
    # loop). The writer's backends as a whole also run the bench's own statement, which is
    # the app's cost in either design, not the notification's.
    outbox = dig(results, "database", "outbox") or {}
    if "error" in outbox:
        outbox = {}  # a failed scenario's partial figures are not trusted
    others = dig(relay, "steady", "cpuSplit", "postgres")
    committed = dig(relay, "steady", "committed")
    used = dig(outbox, "backendCpu", "usPerTransaction") or {}
    notify_us = (used["notify"] - used["base"]
                 if isinstance(used.get("notify"), (int, float))
                 and isinstance(used.get("base"), (int, float)) else None)
    if others is not None and committed:
        put("postgresCpuSecondsPerNotification",
            others / committed + max(0.0, notify_us or 0.0) / 1e6, "seconds",
            f"relay, steady: PostgreSQL's processes other than the writer's backends per "
            f"notification ({others:.2f} CPU-s for {committed:,})"
            + (f", plus a NOTIFY's own cost in the writer's transaction ({notify_us:.1f} us, "
               "the outbox scenario)" if notify_us is not None else
               "; a NOTIFY's own cost in the writer's transaction not measured in this run"))
    else:  # results from before the CPU split: the writer's backends were not counted
        pg_cpu = dig(relay, "steady", "postgresCpuPer10k")
        put("postgresCpuSecondsPerNotification", pg_cpu / 10_000 if pg_cpu else None,
            "seconds", "relay, steady: PostgreSQL's CPU (writers' commits, relay's backend) per "
            "notification")
    put("listenerBackendUssBytes", _per(dig(relay, "db", "backendUss"),
                                        dig(relay, "db", "connections")),
        "bytes", "relay, db: USS of relay's PostgreSQL backend, all clients' channels LISTENed")

    notify = dig(results, "database", "notify") or {}
    durable = notify.get("external") or notify.get("fsyncOn")
    if durable:
        where = "--notify-dsn" if "external" in notify else "the embedded PostgreSQL, fsync on"
        written = dig(durable, "notifyWrite", "commitsPerSecond")
        put("notifyCommitsPerSecond", written or dig(durable, "notify", "commitsPerSecond"),
            "per second",
            f"notify: {dig(durable, 'notify', 'writers')} writers, "
            + ("each transaction writing a row and sending one NOTIFY (a NOTIFY alone: "
               f"{dig(durable, 'notify', 'commitsPerSecond'):.0f}/s, its COMMIT waits for no "
               "flush), " if written else "one NOTIFY per transaction, ") + where)

    if outbox:
        put("outboxBytesPerMessage", outbox.get("outboxBytesPerRow"), "bytes",
            f"outbox: relay.outbox's growth (heap, TOAST, indexes) per message of "
            f"{outbox.get('payloadBytes')} payload bytes")
        wal, cleanup_wal = outbox.get("walBytesPerMessage"), dig(outbox, "cleanup",
                                                                   "walBytesPerRow")
        put("outboxWalBytesPerMessage",
            wal + (cleanup_wal or 0) if isinstance(wal, (int, float)) else None, "bytes",
            f"outbox, fsync {outbox.get('fsync')}: WAL of a relay_publish transaction minus a "
            f"pg_notify one ({wal}), plus cleanup's DELETE per row ({cleanup_wal}); VACUUM and "
            "full-page images after checkpoints not counted")
        cpu = outbox.get("backendCpu") or {}
        added, further = cpu.get("addedUs"), cpu.get("addedUsPerFurtherMessage")
        put("publishCpuSecondsPerCommit", added / 1e6 if added else None, "seconds",
            f"outbox: backend CPU of a one-message relay_publish transaction minus a pg_notify "
            f"one ({used.get('publish')} - {used.get('notify')} us; a server-side loop, the "
            "least of its rounds)")
        put("publishCpuSecondsPerFurtherMessage", further / 1e6 if further else None,
            "seconds",
            f"outbox: (five relay_publish in one transaction - one) / 4, less a pg_notify's "
            f"own cost ({used.get('publish5')}, {used.get('publish')}, {used.get('notify')} - "
            f"{used.get('base')} us)")
        per_thousand = dig(outbox, "cleanup", "msPer1000Rows")
        put("outboxCleanupCpuSecondsPerMessage",
            per_thousand / 1e6 if per_thousand else None, "seconds",
            f"outbox: relay.cleanup's time per expired row ({per_thousand} ms per 1,000, "
            "batches of 2,000; wall time of the call on an otherwise idle server)")

    # relay_publish's ceiling: measured on the app's own database (--notify-dsn, where relay's
    # SQL is installed) when there is one, else on the embedded one by the outbox scenario.
    external = dig(notify, "external", "publishWrite")
    ceiling = outbox.get("commitCeiling") or {}
    if external:
        put("publishCommitsPerSecond", external.get("commitsPerSecond"), "per second",
            f"notify --notify-dsn: {external.get('writers')} writers, each transaction writing "
            "a row and one relay_publish, that database as configured")
    else:
        put("publishCommitsPerSecond", dig(ceiling, "publish", "commitsPerSecond"),
            "per second",
            f"outbox: {ceiling.get('writers')} writers, each transaction writing a row and "
            f"one relay_publish, fsync {outbox.get('fsync')}, the worse of two runs (pg_notify "
            f"alternated with it: {dig(ceiling, 'notify', 'commitsPerSecond')}/s)")

    old = _server(results, "per-client-listen")
    backends = dig(old, "db", "connections")
    put("oldBackendUssBytes", _per(dig(old, "db", "backendUss"), backends), "bytes",
        "per-client-listen, db: USS of one session's PostgreSQL backend")
    put("oldBackendRssBytes", _per(dig(old, "db", "backendRss"), backends), "bytes",
        "per-client-listen, db: RSS of one session's backend (counts shared buffers)")
    old_cpu = dig(old, "steady", "serverCpuPer10k")
    put("oldFunctionCpuSecondsPerDelivery", old_cpu / 10_000 if old_cpu else None, "seconds",
        "per-client-listen, steady: the Node server's CPU per delivered update")
    old_pg = dig(old, "steady", "postgresCpuPer10k")
    put("oldPostgresCpuSecondsPerNotificationPerListener",
        _per(old_pg / 10_000 if old_pg else None, backends), "seconds",
        "per-client-listen, steady: PostgreSQL's CPU per notification / listening backends")

    machine = results.get("machine", {})
    return {
        "format": 1,
        "about": "Figures measured by make bench for python -m relay size (docs/cost.md).",
        "runs": {run_id: {
            "date": time.strftime("%Y-%m-%d", time.localtime(started)),
            "commit": results.get("commit"), "command": results.get("command"),
            "quick": bool(config.get("quick")), "results": results_file,
            "connections": config.get("connections"), "workers": workers,
            "machine": {k: machine.get(k) for k in ("nproc", "cpu", "ramGiB", "postgres",
                                                    "python", "kernel")},
        }},
        "figures": figures,
    }


def _per(total: Any, count: Any) -> float | None:
    if isinstance(total, (int, float)) and isinstance(count, (int, float)) and count > 0:
        return total / count
    return None


def write_sizing_figures(results: dict[str, Any], path: Path, results_file: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sizing_figures(results, results_file), indent=2) + "\n")
    return path
