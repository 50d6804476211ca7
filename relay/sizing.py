"""Capacity planning: how many Fly machines, which settings and what it costs, from measurements.

Pure arithmetic over three things: the load (``Inputs``: users, connections per user, peak
notification rate, machine size, reconnect window, and every assumption that is not a
measurement), the figures ``make bench`` measured and the list prices (``Figures`` and
``Prices``, relay/sizing_data.py). The load and its checks are relay/sizing_inputs.py; the
design relay replaced (one PostgreSQL connection and one long-lived serverless function per
open browser session) is priced for the same load by relay/sizing_old_design.py, and put
next to relay's bill here.

``python -m relay size`` (relay/sizing_report.py) prints it; fly.toml's limits and
docs/cost.md's table come from here (tests/test_sizing.py checks both). Nothing here reads a
file, the environment or the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from relay.config import Settings
from relay.sizing_data import (
    HOURS_PER_MONTH,
    MIB,
    NEON_RESERVED_CONNECTIONS,
    PRESETS,
    SECONDS_PER_MONTH,
    SHARED,
    Figures,
    Preset,
    Prices,
    SizingError,
    mb_text,
    neon_max_connections,
)
from relay.sizing_inputs import Inputs, validate
from relay.sizing_old_design import OldDesign, old_design, old_design_notes

GB = 1e9  # prices per GB (data, storage) are per 10^9 bytes
_DEFAULT_SETTINGS = Settings(database_url="", jwt_secret=b"")

# relay's heartbeat on the wire: the ping frame (2-byte header + '{"type":"ping"}'), a TLS 1.3
# record's overhead (5-byte header, 1-byte content type, 16-byte tag) and IPv4 + TCP headers
# with timestamps (52 bytes): each ping is a segment of its own from Fly's edge to the browser.
PING_WIRE_BYTES = 2 + len(b'{"type":"ping"}') + 22 + 52


# ----- one machine -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineSettings:
    """What one machine of a preset and memory holds, and the settings that say so."""

    preset: Preset
    memory_mb: int
    workers: int  # WEB_CONCURRENCY
    worker_connections: int  # RELAY_WORKER_CONNECTIONS
    websockets_per_worker: int  # Settings.worker_connection_limit
    websockets_per_machine: int
    soft_limit: int
    hard_limit: int
    bound_by: str  # what set RELAY_WORKER_CONNECTIONS
    baseline_bytes: float  # processes without clients, plus the resume-history budget
    bytes_per_connection: float  # measured idle RSS + the planning allowance
    memory_at_hard_limit_bytes: float
    handshakes_per_second: float  # the machine, all workers
    month_usd: float

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MIB


def machine_month_usd(preset: Preset, memory_mb: int, prices: Prices) -> float:
    vcpu = (prices.fly_shared_vcpu_second if preset.cpu is SHARED
            else prices.fly_performance_vcpu_second)
    extra_gb = max(0, memory_mb - preset.vcpus * preset.cpu.included_mb_per_vcpu) / 1024
    return (preset.vcpus * vcpu + extra_gb * prices.fly_ram_gb_second) * SECONDS_PER_MONTH


def websockets_per_worker(worker_connections: int) -> int:
    """relay's own rule (Settings.worker_connection_limit), not a copy of it."""
    return replace(_DEFAULT_SETTINGS, worker_connections=worker_connections) \
        .worker_connection_limit


def _worker_connections_for(cap: int, ceiling: int) -> int:
    """The largest round RELAY_WORKER_CONNECTIONS (≤ ceiling) whose limit stays ≤ cap."""
    if websockets_per_worker(ceiling) <= cap:
        return ceiling
    step = 500 if cap >= 2_000 else 50 if cap >= 200 else 10
    value = min(ceiling, (cap + max(10, cap // 99)) // step * step)
    while value > 10 and websockets_per_worker(value) > cap:
        value -= step
    return max(10, value)


def _two_figures(value: float, up: bool = False) -> int:
    """``value`` rounded to two significant figures (down, or to the nearest with ``up``)."""
    if value < 10:
        return max(1, int(value))
    unit = 10 ** (int(math.log10(value)) - 1)
    return int((round(value / unit) if up else math.floor(value / unit)) * unit)


def machine_settings(preset: Preset, memory_mb: int, figures: Figures, inputs: Inputs,
                     prices: Prices) -> MachineSettings:
    """RELAY_WORKER_CONNECTIONS, the limits and the memory of one machine, from the figures."""
    workers = preset.vcpus
    baseline = (figures.baseline_fixed_rss_bytes + workers * figures.baseline_worker_rss_bytes
                + inputs.history_bytes)
    per_connection = figures.idle_bytes_per_connection + inputs.allowance_bytes_per_connection
    usable = memory_mb * MIB * inputs.usable_memory_share
    room = usable - baseline
    minimum_per_worker = 100
    if room < workers * minimum_per_worker * per_connection:
        raise SizingError(
            f"{preset.name} with {mb_text(memory_mb)} cannot hold even one worker's connections: "
            f"{mb_text(usable / MIB)} usable, relay's {workers + 3} processes take "
            f"{mb_text((baseline - inputs.history_bytes) / MIB)} and the resume history "
            f"{mb_text(inputs.history_bytes / MIB)}; choose more --memory or a lower --history-mb")
    caps = {
        f"its ceiling (--max-worker-connections {inputs.max_worker_connections})":
            websockets_per_worker(inputs.max_worker_connections),
        "memory": int(room / per_connection / workers),
        f"the {inputs.reconnect_seconds:g} s reconnect window":
            int(inputs.reconnect_seconds * figures.handshakes_per_second_per_worker),
    }
    bound_by = min(caps, key=lambda name: caps[name])
    worker_connections = _worker_connections_for(caps[bound_by], inputs.max_worker_connections)
    per_worker = websockets_per_worker(worker_connections)
    per_machine = workers * per_worker
    hard = _two_figures(per_machine * 0.96)  # ~4 % for an uneven spread between workers
    soft = min(_two_figures(per_machine * 0.8, up=True), hard - 1)
    return MachineSettings(
        preset=preset, memory_mb=memory_mb, workers=workers,
        worker_connections=worker_connections, websockets_per_worker=per_worker,
        websockets_per_machine=per_machine, soft_limit=soft, hard_limit=hard,
        bound_by=bound_by, baseline_bytes=baseline, bytes_per_connection=per_connection,
        memory_at_hard_limit_bytes=baseline + hard * per_connection,
        handshakes_per_second=workers * figures.handshakes_per_second_per_worker,
        month_usd=machine_month_usd(preset, memory_mb, prices))


def reconnect_seconds(connections: float, machine: MachineSettings, fresh: bool) -> float:
    """Time for ``connections`` clients to reconnect to one machine at its handshake rate.

    A freshly started shared machine bursts only on its initial balance (5 s of CPU above the
    baseline, which lasts balance / (1 − baseline) seconds), then runs at its 6.25 % quota.
    """
    rate = machine.handshakes_per_second
    cpu = machine.preset.cpu
    if not fresh or cpu.baseline >= 1:
        return connections / rate
    burst_seconds = cpu.initial_burst_s / (1 - cpu.baseline)
    if connections <= rate * burst_seconds:
        return connections / rate
    return burst_seconds + (connections - rate * burst_seconds) / (rate * cpu.baseline)


# ----- the whole answer ----------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    machine: MachineSettings
    machines: int
    set_by: str  # "the minimum", "connections" or "deliveries"
    machines_for_connections: int
    machines_for_cpu: int
    connections_per_machine: float
    memory_per_machine_bytes: float
    cpu_share_of_quota: float  # at peak, of the sustained quota (baseline × vCPUs)
    burst_deliveries_per_second: float  # one machine at 100 % of its vCPUs, nothing else
    reconnect_s: float  # this load, each machine re-accepting its own clients
    reconnect_fresh_s: float  # the same on freshly started machines
    full_reconnect_s: float  # a machine at its hard limit
    full_reconnect_fresh_s: float


@dataclass(frozen=True)
class Outbox:
    table_bytes: float
    wal_bytes_per_day: float
    month_usd: float


@dataclass(frozen=True)
class DatabaseSide:
    connections: int  # one LISTEN connection per machine
    max_connections: int  # of the compute
    backend_uss_bytes: float
    compute_cu: float
    compute_month_usd: float  # the compute never suspends while relay runs
    commits_per_second: float  # notifying commits at peak
    commit_ceiling: float  # measured for the way the app publishes (inputs.publishing)
    commit_ceiling_measured: bool  # False: relay_publish's not measured, pg_notify's stands in
    notify_vcpu_at_peak: float  # the NOTIFYs themselves, as pg_notify sends them
    relay_sql_vcpu_at_peak: float | None  # relay_publish beyond that; None: not measured
    relay_sql_month_usd: float  # its average, billed as autoscaled compute
    outbox: Outbox | None

    @property
    def postgres_vcpu_at_peak(self) -> float:
        return self.notify_vcpu_at_peak + (self.relay_sql_vcpu_at_peak or 0.0)


@dataclass(frozen=True)
class Sizing:
    inputs: Inputs
    connections: int
    rate: float
    deliveries_per_second: float
    fleet: Fleet
    database: DatabaseSide
    old: OldDesign
    fly_month_usd: float
    egress_month_usd: float  # relay's heartbeats
    month_usd: float
    notes: tuple[str, ...]

    @property
    def reduction(self) -> float | None:
        old = self.old.month_usd
        return None if old is None or old <= 0 else 1 - self.month_usd / old


def _fleet(machine: MachineSettings, connections: int, deliveries: float, figures: Figures,
           inputs: Inputs) -> Fleet:
    cpu = machine.preset.cpu
    budget = machine.preset.vcpus * cpu.baseline * inputs.cpu_target  # vCPU-seconds per second
    # A heartbeat (ping out, pong in) is taken to cost one delivery: not measured on its own.
    heartbeats = connections / inputs.ping_interval
    needed = (deliveries + heartbeats) * figures.cpu_seconds_per_delivery
    by_connections = math.ceil(connections / machine.soft_limit)
    by_cpu = math.ceil(needed / budget) if needed else 0
    machines = max(inputs.min_machines, by_connections, by_cpu)
    set_by = ("the minimum" if machines == inputs.min_machines and machines > max(
        by_connections, by_cpu) else "deliveries" if by_cpu > by_connections else "connections")
    per_machine = connections / machines
    return Fleet(
        machine=machine, machines=machines, set_by=set_by,
        machines_for_connections=by_connections, machines_for_cpu=by_cpu,
        connections_per_machine=per_machine,
        memory_per_machine_bytes=machine.baseline_bytes
        + per_machine * machine.bytes_per_connection,
        cpu_share_of_quota=needed / machines / (machine.preset.vcpus * cpu.baseline),
        burst_deliveries_per_second=machine.preset.vcpus / figures.cpu_seconds_per_delivery,
        reconnect_s=reconnect_seconds(per_machine, machine, fresh=False),
        reconnect_fresh_s=reconnect_seconds(per_machine, machine, fresh=True),
        full_reconnect_s=reconnect_seconds(machine.hard_limit, machine, fresh=False),
        full_reconnect_fresh_s=reconnect_seconds(machine.hard_limit, machine, fresh=True))


def _candidates(inputs: Inputs) -> list[tuple[Preset, int]]:
    presets = list(PRESETS.values()) if inputs.machine == "auto" else [PRESETS[inputs.machine]]
    if inputs.memory_mb is not None:
        return [(presets[0], inputs.memory_mb)]
    return [(preset, memory) for preset in presets for memory in preset.memory_tiers_mb]


def size(inputs: Inputs, figures: Figures, prices: Prices) -> Sizing:
    """Machines, settings, database side and monthly cost for ``inputs``, against the old design."""
    validate(inputs)
    connections = math.ceil(inputs.users * inputs.connections_per_user)
    rate = inputs.rate
    deliveries = rate * inputs.connections_per_user  # every notified user online: worst case
    fleets: list[Fleet] = []
    refusals: list[str] = []
    for preset, memory_mb in _candidates(inputs):
        try:
            machine = machine_settings(preset, memory_mb, figures, inputs, prices)
        except SizingError as exc:
            refusals.append(str(exc))
            continue
        fleets.append(_fleet(machine, connections, deliveries, figures, inputs))
    if not fleets:
        raise SizingError(refusals[0])
    fleet = min(fleets, key=lambda f: (f.machines * f.machine.month_usd, f.machines))
    database = _database_side(fleet, rate, figures, inputs, prices)
    old = old_design(connections, rate, figures, inputs, prices)
    fly = fleet.machines * fleet.machine.month_usd
    egress = (connections * SECONDS_PER_MONTH / inputs.ping_interval * PING_WIRE_BYTES / GB
              * prices.fly_egress_gb)
    total = fly + egress + database.compute_month_usd + database.relay_sql_month_usd + (
        database.outbox.month_usd if database.outbox else 0.0)
    sizing = Sizing(inputs=inputs, connections=connections, rate=rate,
                    deliveries_per_second=deliveries, fleet=fleet, database=database, old=old,
                    fly_month_usd=fly, egress_month_usd=egress, month_usd=total, notes=())
    return replace(sizing, notes=tuple(_notes(sizing, figures)))


def relay_sql_seconds(rate: float, notifications_per_commit: float,
                      figures: Figures) -> float | None:
    """CPU-seconds per second that relay_publish and the outbox's cleanup take in the database
    beyond what pg_notify would for the same messages, or None when not measured: a commit's
    first message, each further one, and cleanup's delete of every message."""
    first = figures.publish_cpu_seconds_per_commit
    if first is None:
        return None
    commits = rate / notifications_per_commit
    further = max(0.0, rate - commits)
    return (commits * first
            + further * (figures.publish_cpu_seconds_per_further_message or first)
            + rate * (figures.outbox_cleanup_cpu_seconds_per_message or 0.0))


def _database_side(fleet: Fleet, rate: float, figures: Figures, inputs: Inputs,
                   prices: Prices) -> DatabaseSide:
    durable = inputs.publishing == "outbox"
    outbox = None
    if durable and figures.outbox_bytes_per_message is not None:
        average_rate = rate * inputs.average_share
        table = average_rate * inputs.outbox_retention_hours * 3600 \
            * figures.outbox_bytes_per_message
        wal = average_rate * 86_400 * (figures.outbox_wal_bytes_per_message or 0.0)
        outbox = Outbox(table_bytes=table, wal_bytes_per_day=wal,
                        month_usd=table / GB * prices.neon_storage_gb_month)
    relay_sql = (relay_sql_seconds(rate, inputs.notifications_per_commit, figures)
                 if durable else 0.0)
    ceiling = figures.publish_commits_per_second if durable else None
    return DatabaseSide(
        connections=fleet.machines, max_connections=neon_max_connections(inputs.neon_cu),
        backend_uss_bytes=fleet.machines * figures.listener_backend_uss_bytes,
        compute_cu=inputs.neon_cu,
        compute_month_usd=inputs.neon_cu * HOURS_PER_MONTH * prices.neon_cu_hour,
        commits_per_second=rate / inputs.notifications_per_commit,
        commit_ceiling=ceiling or figures.notify_commits_per_second,
        commit_ceiling_measured=ceiling is not None or not durable,
        notify_vcpu_at_peak=rate * figures.postgres_cpu_seconds_per_notification,
        relay_sql_vcpu_at_peak=relay_sql,
        # Neon bills a compute by its size while active: relay's SQL on average (at the
        # month's average share of the peak) is that much more compute, autoscaled.
        relay_sql_month_usd=(relay_sql or 0.0) * inputs.average_share * HOURS_PER_MONTH
        * prices.neon_cu_hour,
        outbox=outbox)


def _notes(s: Sizing, figures: Figures) -> list[str]:
    notes = []
    fleet, machine = s.fleet, s.fleet.machine
    if fleet.set_by == "deliveries":
        notes.append(
            f"deliveries, not connections, set the machine count ({fleet.machines_for_cpu} "
            f"against {fleet.machines_for_connections}): compare a performance preset "
            "(--machine auto)")
    shared = machine.preset.cpu.baseline < 1
    if shared and fleet.full_reconnect_fresh_s > s.inputs.reconnect_seconds:
        notes.append(
            f"a freshly started {machine.preset.name} has only "
            f"{machine.preset.cpu.initial_burst_s:g} s of CPU burst: a full machine's clients "
            f"would take {fleet.full_reconnect_fresh_s:.0f} s to reconnect to it (with several "
            "machines they reconnect to the others, which have their balance)")
    db = s.database
    durable = s.inputs.publishing == "outbox"
    if db.commits_per_second > db.commit_ceiling:
        notes.append(
            f"{db.commits_per_second:,.0f} notifying commits/s exceed the measured ceiling "
            f"({db.commit_ceiling:,.0f}/s"
            + (", relay_publish" if durable and db.commit_ceiling_measured else "")
            + "): writers would queue on "
            + ("relay's commit lock" if durable else "PostgreSQL's NOTIFY queue lock")
            + "; batch notifications per transaction (--notifications-per-commit) or put a log "
            "between the database and relay (docs/operations.md, Scale-out)")
    if db.postgres_vcpu_at_peak > db.compute_cu:
        notes.append(
            f"at peak the notifications take {db.postgres_vcpu_at_peak:.2g} vCPU of the "
            f"database, more than the {db.compute_cu:g} CU compute relay keeps awake: the "
            f"app's compute needs {db.postgres_vcpu_at_peak:.2g} CU to spare at peak (let it "
            "autoscale that far)"
            + (", or publish several notifications per transaction "
               "(--notifications-per-commit)" if durable else ""))
    if durable and db.relay_sql_vcpu_at_peak is None:
        notes.append("relay_publish's CPU in the database is not measured in these figures: "
                     "only the NOTIFYs are counted (make bench's outbox scenario measures it)")
    if durable and not db.commit_ceiling_measured:
        notes.append("relay_publish's commit ceiling is not measured in these figures: "
                     "pg_notify's stands in, and relay_publish's is lower (make bench's outbox "
                     "scenario measures it)")
    if s.database.connections > s.database.max_connections - NEON_RESERVED_CONNECTIONS:
        notes.append(f"{s.database.connections} LISTEN connections exceed a "
                     f"{s.database.compute_cu:g} CU compute's max_connections: choose a larger "
                     "--neon-cu")
    notes.extend(old_design_notes(s.old))
    if durable and figures.outbox_bytes_per_message is None:
        notes.append("the durable outbox (issue 13) is not measured in these figures: its rows "
                     "and WAL are not in this bill (make bench's outbox scenario measures them)")
    return notes
