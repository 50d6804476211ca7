"""``python -m relay size``'s output: the report for one load and the table docs/cost.md embeds.

``render`` and ``render_table`` turn a ``relay.sizing.Sizing`` into text; the command line
(relay/sizing_report.py) prints them. Nothing here computes a figure.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.sizing import DatabaseSide, Sizing
from relay.sizing_data import (
    MIB,
    NEON_LARGE_COMPUTE,
    NEON_RESERVED_CONNECTIONS,
    Figures,
    Prices,
)


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


def mem(value_bytes: float) -> str:
    mb = value_bytes / MIB
    if mb < 1024:
        return f"{mb:,.0f} MB"
    return f"{mb / 1024:,.0f} GB" if mb % 1024 == 0 or mb >= 10240 else f"{mb / 1024:,.1f} GB"


def seconds(value: float) -> str:
    return f"{value:,.0f} s" if value >= 10 else f"{value:.1f} s"


def rate(value: float) -> str:
    """A rate or a CPU count: whole from 10 up, two significant figures below."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def machine_name(s: Sizing) -> str:
    m = s.fleet.machine
    return f"{m.preset.name}, {mem(m.memory_bytes)}"


def _compute(cu: float | None) -> str:
    if cu is None:
        return "none"
    return f"{cu:g} CU"


def _provenance(figures: Figures, prices: Prices) -> list[str]:
    runs = figures.runs
    used: dict[str, list[str]] = {}
    for key, source in figures.sources.items():
        if source.get("value", 0) is not None:
            used.setdefault(source.get("run") or "?", []).append(key)
    lines = []
    for run_id, keys in used.items():
        run = runs.get(run_id, {})
        machine = run.get("machine", {})
        where = (f"{machine.get('nproc')} CPUs ({machine.get('cpu')}), PostgreSQL "
                 f"{machine.get('postgres')}" if machine else "")
        kind = " (a --quick run)" if run.get("quick") else ""
        lines.append(f"figures: {len(keys)} from {run_id}{kind}, {run.get('date', '?')} at "
                     f"{run.get('commit') or '?'}, {where}")
    reads = sorted({str(s.get("read")) for s in prices.sources.values() if s.get("read")})
    overridden = sorted(k for k, s in prices.sources.items() if not s.get("read"))
    line = f"prices: USD list prices read {', '.join(reads) or '?'} (docs/cost.md cites them)"
    if overridden:
        line += f"; overridden: {', '.join(overridden)}"
    lines.append(line)
    return lines


def render(s: Sizing, figures: Figures, prices: Prices) -> str:
    i, fleet, m, db, old = s.inputs, s.fleet, s.fleet.machine, s.database, s.old
    durable = i.publishing == "outbox"
    cpu = m.preset.cpu
    quota = (f"{m.preset.vcpus} × {cpu.baseline:.2%} of a vCPU" if cpu.baseline < 1
             else f"{m.preset.vcpus} vCPUs")
    burst = (f"; bursts to 100 % ({rate(fleet.burst_deliveries_per_second)} deliveries/s) for "
             f"up to {cpu.max_burst_s / (1 - cpu.baseline):.0f} s" if cpu.baseline < 1 else "")
    out: list[tuple[str, str] | str] = []
    out.append(f"relay size: {i.users:,} users at peak × {i.connections_per_user:g} = "
               f"{s.connections:,} WebSockets; peak {rate(s.rate)} notifications/s = "
               f"{rate(s.deliveries_per_second)} deliveries/s")
    out.append("")
    out.append("Fly.io")
    out += [
        ("machines", f"{fleet.machines} × {machine_name(s)} ({m.preset.vcpus} {cpu.name} "
                     f"vCPUs), {usd(m.month_usd)}/month each"),
        ("why that many", f"connections need {fleet.machines_for_connections}, deliveries "
                          f"{fleet.machines_for_cpu}, --min-machines {i.min_machines}"),
        ("WEB_CONCURRENCY", f"{m.workers}"),
        ("RELAY_WORKER_CONNECTIONS", f"{m.worker_connections} ({m.websockets_per_worker:,} "
                                     f"WebSockets per worker, {m.websockets_per_machine:,} per "
                                     f"machine; set by {m.bound_by})"),
        ("fly.toml", f"soft_limit = {m.soft_limit}, hard_limit = {m.hard_limit}"),
        ("memory per machine", f"{mem(fleet.memory_per_machine_bytes)} at this load, "
                               f"{mem(m.memory_at_hard_limit_bytes)} at hard_limit, of "
                               f"{mem(m.memory_bytes)} (headroom at hard_limit "
                               f"{mem(m.memory_bytes - m.memory_at_hard_limit_bytes)})"),
        ("CPU per machine at peak", f"{fleet.cpu_share_of_quota:.0%} of the sustained quota "
                                    f"({quota}){burst}"),
        ("full reconnect", f"{seconds(fleet.reconnect_s)} at this load"
                           + (f" ({seconds(fleet.reconnect_fresh_s)} on freshly started "
                              "machines)" if cpu.baseline < 1 else "")
                           + f"; {seconds(fleet.full_reconnect_s)} for a machine at hard_limit"
                           f" ({rate(m.handshakes_per_second)} handshakes/s)"),
    ]
    out.append("Database (PostgreSQL on Neon)")
    out += [
        ("connections", f"{db.connections} (one LISTEN per machine), backends "
                        f"{mem(db.backend_uss_bytes)} USS; old design: {old.sessions:,}"),
        ("compute", f"{db.compute_cu:g} CU never suspends while relay runs (its health query "
                    f"is activity): {usd(s.database.compute_month_usd)}/month"),
        ("publishing", "relay_publish, the durable outbox (--publishing outbox)" if durable
         else "the app's own pg_notify per user, no durable history (--publishing notify)"),
        ("notifying commits", f"{rate(db.commits_per_second)}/s at peak, "
                              f"{db.commits_per_second / db.commit_ceiling:.1%} of the measured "
                              f"ceiling ({db.commit_ceiling:,.0f}/s"
                              + (", relay_publish" if durable and db.commit_ceiling_measured
                                 else ", pg_notify's") + ")"),
        ("PostgreSQL CPU at peak", _database_cpu(db)),
    ]
    if durable:
        out.append(("outbox (issue 13)", "not measured, not in this bill" if db.outbox is None
                    else f"{mem(db.outbox.table_bytes)} retained ({i.outbox_retention_hours:g} "
                         f"h), {mem(db.outbox.wal_bytes_per_day)} of WAL a day: "
                         f"{usd(db.outbox.month_usd)}/month"))
    out.append("The old design (one function and one PostgreSQL connection per session)")
    neon = (f"{_compute(old.neon_cu)}: {usd(old.neon_month_usd)}/month" if old.neon_cu
            else f"none: Neon allows at most {NEON_LARGE_COMPUTE[2] - NEON_RESERVED_CONNECTIONS:,}"
                 " connections (a pooler cannot carry LISTEN)")
    out += [
        ("PostgreSQL connections", f"{old.sessions:,}; backends {mem(old.backend_uss_bytes)} USS "
                                   f"({mem(old.backend_rss_bytes)} RSS)"),
        ("smallest Neon compute", neon),
        ("PostgreSQL CPU at peak", f"{rate(old.postgres_vcpu_at_peak)} vCPU (every commit wakes "
                                   "every listening backend)"),
        ("Vercel functions", f"{old.average_sessions:,.0f} sessions on average: "
                             f"{old.function_gb_hours:,.0f} GB-hours, "
                             f"{old.function_cpu_hours:,.1f} CPU-hours, "
                             f"{old.invocations / 1e6:,.2f} M invocations: "
                             f"{usd(old.vercel_month_usd)}/month"),
    ]
    out.append("Cost per month (USD, 730 hours)")
    reduction = s.reduction
    out += [
        ("relay", f"{usd(s.month_usd)} = Fly {usd(s.fly_month_usd)} + heartbeat egress "
                  f"{usd(s.egress_month_usd)} + Neon {usd(db.compute_month_usd)}"
                  + (f" + relay_publish's compute {usd(db.relay_sql_month_usd)}"
                     if db.relay_sql_month_usd else "")
                  + (f" + outbox {usd(db.outbox.month_usd)}" if db.outbox else "")),
        ("old design", "cannot run (see above)" if old.month_usd is None else
         f"{usd(old.month_usd)} = Vercel {usd(old.vercel_month_usd)} + Neon "
         f"{usd(old.neon_month_usd)}"),
        ("reduction", "—" if reduction is None else f"{reduction:.1%}"),
    ]
    if s.notes:
        out.append("Notes")
        out += [f"  - {note}" for note in s.notes]
    out += _provenance(figures, prices)
    width = max(len(item[0]) for item in out if isinstance(item, tuple))
    return "\n".join(f"  {item[0]:<{width}}  {item[1]}" if isinstance(item, tuple) else item
                     for item in out)


def _database_cpu(db: DatabaseSide) -> str:
    notify = f"{db.notify_vcpu_at_peak:.2g} vCPU for the NOTIFYs"
    if db.relay_sql_vcpu_at_peak is None:
        return f"{notify}; relay_publish's numbering not measured"
    if not db.relay_sql_vcpu_at_peak:
        return notify
    return (f"{db.postgres_vcpu_at_peak:.2g} vCPU: relay_publish's numbering, outbox and "
            f"cleanup {db.relay_sql_vcpu_at_peak:.2g}, {notify}; autoscaled compute for its "
            f"average: {usd(db.relay_sql_month_usd)}/month")


def render_table(sizings: list[Sizing], figures: Figures, prices: Prices) -> str:
    """The markdown table of docs/cost.md: one column per load."""

    def row(label: str, cell: Callable[[Sizing], str]) -> list[str]:
        return [label, *(cell(s) for s in sizings)]

    first = sizings[0].inputs

    def reduction(s: Sizing) -> str:
        return ("old design cannot run" if s.old.month_usd is None
                else f"**{s.reduction:.1%}**" if s.reduction is not None else "—")

    rows = [
        ["", *(f"{s.inputs.users:,} users" for s in sizings)],
        row(f"WebSockets at peak ({first.connections_per_user:g} per user)",
            lambda s: f"{s.connections:,}"),
        row("peak notifications/s (deliveries/s)",
            lambda s: f"{rate(s.rate)} ({rate(s.deliveries_per_second)})"),
        row("**relay**: Fly machines", lambda s: f"{s.fleet.machines} × {machine_name(s)}"),
        row("machines needed for connections / deliveries",
            lambda s: f"{s.fleet.machines_for_connections} / {s.fleet.machines_for_cpu}"),
        row("`WEB_CONCURRENCY` / `RELAY_WORKER_CONNECTIONS`",
            lambda s: f"{s.fleet.machine.workers} / {s.fleet.machine.worker_connections}"),
        row("fly.toml `soft_limit` / `hard_limit`",
            lambda s: f"{s.fleet.machine.soft_limit:,} / {s.fleet.machine.hard_limit:,}"),
        row("memory per machine: this load / at `hard_limit`",
            lambda s: f"{mem(s.fleet.memory_per_machine_bytes)} / "
                      f"{mem(s.fleet.machine.memory_at_hard_limit_bytes)}"),
        row("CPU per machine at peak, of the sustained quota",
            lambda s: f"{s.fleet.cpu_share_of_quota:.0%}"),
        row("full reconnect (freshly started machines)",
            lambda s: f"{seconds(s.fleet.reconnect_s)} ({seconds(s.fleet.reconnect_fresh_s)})"),
        row("PostgreSQL connections", lambda s: f"{s.database.connections:,}"),
        row("notifying commits at peak, of the ceiling",
            lambda s: f"{s.database.commits_per_second / s.database.commit_ceiling:.1%}"),
        row("database CPU at peak: NOTIFYs + relay_publish (vCPU)",
            lambda s: f"{s.database.notify_vcpu_at_peak:.2g} + "
                      f"{s.database.relay_sql_vcpu_at_peak or 0:.2g}"),
        row("Fly machines $/month", lambda s: usd(s.fly_month_usd)),
        row("heartbeat egress $/month", lambda s: usd(s.egress_month_usd)),
        row(f"Neon compute, never suspends ({first.neon_cu:g} CU) $/month",
            lambda s: usd(s.database.compute_month_usd)),
        row("Neon compute for relay_publish (its average, autoscaled) $/month",
            lambda s: usd(s.database.relay_sql_month_usd)),
        row("outbox storage $/month",
            lambda s: usd(s.database.outbox.month_usd) if s.database.outbox else "—"),
        row("**relay $/month**", lambda s: f"**{usd(s.month_usd)}**"),
        row("**old design**: PostgreSQL connections", lambda s: f"{s.old.sessions:,}"),
        row("their backends' memory (USS)", lambda s: mem(s.old.backend_uss_bytes)),
        row("smallest Neon compute that allows them", lambda s: _compute(s.old.neon_cu)),
        row("PostgreSQL CPU at peak (vCPU)", lambda s: rate(s.old.postgres_vcpu_at_peak)),
        row("Neon compute $/month", lambda s: usd(s.old.neon_month_usd)),
        row(f"Vercel functions ({first.old_sessions_per_instance} session per instance) "
            "$/month", lambda s: usd(s.old.vercel_month_usd)),
        row("**old design $/month**", lambda s: f"**{usd(s.old.month_usd)}**"),
        row("**reduction**", reduction),
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for index, cells in enumerate(rows):
        lines.append("| " + " | ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append("")
    lines.append(f"Machine: {first.machine}"
                 + (f", {first.memory_mb} MB" if first.memory_mb else ", cheapest memory")
                 + f"; reconnect window {first.reconnect_seconds:g} s; peak rate "
                 + ("users / 60 per second" if first.peak_rate is None else
                    f"{first.peak_rate:g}/s") + ".")
    applies: dict[str, list[str]] = {}
    for s in sizings:
        for note in s.notes:
            applies.setdefault(note, []).append(f"{s.inputs.users:,}")
    for note, users in applies.items():
        who = "all" if len(users) == len(sizings) else " and ".join(users) + " users"
        lines.append(f"- {who}: {note}")
    lines.append("")
    lines += [f"- {line}." for line in _provenance(figures, prices)]
    return "\n".join(lines)
