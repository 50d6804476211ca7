"""What ``python -m relay size`` is asked: the load, and every assumption that is not a measurement.

``Inputs`` holds each with its default (the command's options, relay/sizing_report.py, map
onto it one to one); ``validate`` refuses nonsense with one line naming the option. Read by
relay/sizing.py (relay's side) and relay/sizing_old_design.py (the design it replaced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.config import Settings
from relay.sizing_data import MIB, PRESETS, SizingError, neon_compute_sizes

_DEFAULT_SETTINGS = Settings(database_url="", jwt_secret=b"")
PUBLISHING = ("outbox", "notify")


@dataclass(frozen=True)
class Inputs:
    """The load and every assumption that is not a measurement, each with its default."""

    users: int  # connected at the same time, at peak
    connections_per_user: float = 1.5  # devices; the JS client shares one socket among tabs
    peak_rate: float | None = None  # notifications/s at peak; None: users / 60
    notifications_per_commit: float = 1.0  # one per transaction unless the app batches
    # How the app publishes: "outbox", relay_publish with the durable history (after
    # `python -m relay db install`), or "notify", its own triggers' pg_notify on each user's
    # channel (RELAY_USER_CHANNELS=listen, no durable history).
    publishing: str = "outbox"
    machine: str = "shared-cpu-2x"  # a Fly preset, or "auto" for the cheapest
    memory_mb: int | None = None  # None: the cheapest listed tier for this load
    reconnect_seconds: float = 30.0  # longest acceptable full reconnect of one machine
    min_machines: int = 1
    max_worker_connections: int = 10_000  # RELAY_WORKER_CONNECTIONS' ceiling (its default)
    history_bytes: int = _DEFAULT_SETTINGS.history_max_bytes  # RELAY_HISTORY_MAX_BYTES
    ping_interval: float = _DEFAULT_SETTINGS.ping_interval  # RELAY_PING_INTERVAL
    # Planning allowances, not measurements (docs/cost.md says why each).
    allowance_bytes_per_connection: float = 14_000.0  # kernel buffers, queues, fragmentation
    usable_memory_share: float = 0.85  # the rest for the kernel and Fly's init
    cpu_target: float = 0.7  # of the sustained quota, so the p99 stays low (make bench-sweep)
    average_share: float = 0.5  # the month's average of connected users / the peak
    neon_cu: float = 0.25  # the compute relay's LISTEN keeps awake
    outbox_retention_hours: float = 0.25  # relay.settings' retention: 15 minutes
    # The old design: one serverless function (and one PostgreSQL connection) per session.
    old_function_memory_gb: float = 1.0
    old_sessions_per_instance: int = 1  # >1 with Fluid compute's in-function concurrency
    old_max_duration_s: float = 800.0  # then the browser reconnects: a new invocation

    @property
    def rate(self) -> float:
        return self.users / 60 if self.peak_rate is None else self.peak_rate


def validate(inputs: Inputs) -> None:
    """Refuse nonsense with one line naming the option."""
    checks: list[tuple[bool, str]] = [
        (inputs.users >= 1, f"--users: must be at least 1, got {inputs.users}"),
        (math.isfinite(inputs.connections_per_user) and inputs.connections_per_user >= 1,
         f"--connections-per-user: must be at least 1, got {inputs.connections_per_user}"),
        (inputs.peak_rate is None or (math.isfinite(inputs.peak_rate) and inputs.peak_rate >= 0),
         f"--peak-rate: must be 0 or more notifications/s, got {inputs.peak_rate}"),
        (inputs.notifications_per_commit > 0,
         f"--notifications-per-commit: must be above 0, got {inputs.notifications_per_commit}"),
        (inputs.publishing in PUBLISHING,
         f"--publishing: must be one of {', '.join(PUBLISHING)}, got {inputs.publishing!r}"),
        (inputs.machine == "auto" or inputs.machine in PRESETS,
         f"--machine: unknown Fly preset {inputs.machine!r} (known: auto, "
         f"{', '.join(PRESETS)})"),
        (inputs.reconnect_seconds > 0,
         f"--reconnect-seconds: must be above 0, got {inputs.reconnect_seconds}"),
        (inputs.min_machines >= 1, f"--min-machines: must be at least 1, got "
                                   f"{inputs.min_machines}"),
        (10 <= inputs.max_worker_connections <= 1_000_000,
         "--max-worker-connections: must be between 10 and 1000000 (RELAY_WORKER_CONNECTIONS' "
         f"range), got {inputs.max_worker_connections}"),
        (inputs.history_bytes >= 0, f"--history-mb: must be 0 or more, got "
                                    f"{inputs.history_bytes / MIB:g}"),
        (inputs.ping_interval > 0, f"--ping-interval: must be above 0, got "
                                   f"{inputs.ping_interval}"),
        (inputs.allowance_bytes_per_connection >= 0,
         f"--allowance-kb: must be 0 or more, got {inputs.allowance_bytes_per_connection / 1e3:g}"),
        (0 < inputs.usable_memory_share <= 1,
         f"--usable-memory: must be above 0 and at most 1, got {inputs.usable_memory_share}"),
        (0 < inputs.cpu_target <= 1,
         f"--cpu-target: must be above 0 and at most 1, got {inputs.cpu_target}"),
        (0 < inputs.average_share <= 1,
         f"--average-share: must be above 0 and at most 1, got {inputs.average_share}"),
        (inputs.neon_cu in neon_compute_sizes(),
         f"--neon-cu: must be a Neon compute size (0.25, 0.5 or 1 to 56), got "
         f"{inputs.neon_cu:g}"),
        (inputs.outbox_retention_hours >= 0,
         f"--outbox-retention-hours: must be 0 or more, got {inputs.outbox_retention_hours}"),
        (inputs.old_function_memory_gb > 0,
         f"--old-function-memory-gb: must be above 0, got {inputs.old_function_memory_gb}"),
        (inputs.old_sessions_per_instance >= 1,
         f"--old-sessions-per-instance: must be at least 1, got "
         f"{inputs.old_sessions_per_instance}"),
        (inputs.old_max_duration_s > 0,
         f"--old-max-duration: must be above 0, got {inputs.old_max_duration_s}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SizingError(message)
    if inputs.memory_mb is not None:
        if inputs.machine == "auto":
            raise SizingError("--memory: choose a --machine too (auto picks the memory itself)")
        PRESETS[inputs.machine].check_memory(inputs.memory_mb)
