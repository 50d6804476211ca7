"""The sizing calculator's data: what the vendors publish and what the benchmark measured.

Fly.io's machine presets and CPU quotas and Neon's connection limits, each cited where it is
defined; the ``Figures`` ``make bench`` measured and the list ``Prices``, read from JSON files
(relay/sizing_figures.json and relay/sizing_prices.json as shipped, overlaid by the user's).
relay/sizing.py computes with them; relay/sizing_report.py loads them for the command line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHIPPED_FIGURES = HERE / "sizing_figures.json"
SHIPPED_PRICES = HERE / "sizing_prices.json"

HOURS_PER_MONTH = 730.0  # 365 × 24 / 12: every monthly figure here is 730 hours
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
MIB = 1 << 20


class SizingError(ValueError):
    """Nonsense input or a machine that cannot run relay; ``str()`` is the one line to print."""


# ----- Fly.io machines ------------------------------------------------------------------------
# Presets and memory tiers: https://fly.io/docs/about/pricing/ ("Started Fly Machines"), read
# 2026-11-30. Memory can be set to any multiple of 256 MB between 256 MB and 2 GB per shared
# vCPU, 2 GB and 8 GB per performance vCPU (https://fly.io/docs/machines/guides-examples/
# machine-sizing/); the tiers are the page's listed options, which `--machine auto` tries.
# CPU quotas: https://fly.io/docs/machines/cpu-performance/ (read 2026-11-30): a shared vCPU
# runs 5 ms of each 80 ms period (6.25 %) and bursts to 100 % on a balance that starts at 5 s
# and accrues up to 500 s; a performance vCPU runs 100 % of the time.


@dataclass(frozen=True)
class CpuKind:
    name: str
    baseline: float  # share of each vCPU the machine may use indefinitely
    initial_burst_s: float  # burst balance of a freshly started machine
    max_burst_s: float
    included_mb_per_vcpu: int  # RAM included in the vCPU's price
    min_mb_per_vcpu: int
    max_mb_per_vcpu: int


SHARED = CpuKind("shared", 5 / 80, 5.0, 500.0, 256, 256, 2048)
PERFORMANCE = CpuKind("performance", 1.0, 0.0, 0.0, 2048, 2048, 8192)


@dataclass(frozen=True)
class Preset:
    name: str
    vcpus: int
    cpu: CpuKind
    memory_tiers_mb: tuple[int, ...]

    def check_memory(self, memory_mb: int) -> None:
        low = self.vcpus * self.cpu.min_mb_per_vcpu
        high = self.vcpus * self.cpu.max_mb_per_vcpu
        if memory_mb % 256 or not low <= memory_mb <= high:
            raise SizingError(
                f"--memory: {self.name} takes {mb_text(low)} to {mb_text(high)} in steps of "
                f"256 MB, got {mb_text(memory_mb)}")


def _tiers(first_mb: int, count: int) -> tuple[int, ...]:
    return tuple(first_mb << i for i in range(count))


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        *(Preset(f"shared-cpu-{n}x", n, SHARED, _tiers(256 * n, 4)) for n in (1, 2, 4, 6, 8)),
        *(Preset(f"performance-{n}x", n, PERFORMANCE, _tiers(2048 * n, 3))
          for n in (1, 2, 4, 6, 8, 10, 12, 14, 16)),
    )
}

# ----- Neon --------------------------------------------------------------------------------------
# max_connections by compute size (CU = 1 vCPU, 4 GB RAM), 7 of them reserved for Neon's
# superuser: https://neon.com/docs/connect/connection-pooling (read 2026-11-30). Computes of
# 9 CU and more are capped at 4,000. Neon's pooler (PgBouncer, transaction mode) accepts
# 10,000 clients but never delivers LISTEN, so it cannot carry a per-session LISTEN design.
NEON_MAX_CONNECTIONS: tuple[tuple[float, int], ...] = (
    (0.25, 104), (0.5, 209), (1, 419), (2, 839), (3, 1258), (4, 1678), (5, 2098), (6, 2517),
    (7, 2937), (8, 3357),
)
NEON_LARGE_COMPUTE = (9, 56, 4000)  # 9 to 56 CU: max_connections capped at 4,000
NEON_RESERVED_CONNECTIONS = 7
NEON_GB_PER_CU = 4


def neon_compute_sizes() -> tuple[float, ...]:
    low, high, _ = NEON_LARGE_COMPUTE
    return (*(size for size, _ in NEON_MAX_CONNECTIONS), *range(low, high + 1))


def neon_max_connections(cu: float) -> int:
    for size, connections in NEON_MAX_CONNECTIONS:
        if cu <= size:
            return connections
    return NEON_LARGE_COMPUTE[2]


def smallest_neon_compute(connections: int) -> float | None:
    """The smallest compute whose max_connections holds ``connections`` (None: none does)."""
    for size in neon_compute_sizes():
        if connections <= neon_max_connections(size) - NEON_RESERVED_CONNECTIONS:
            return size
    return None


# ----- figures and prices (data files) -------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What ``make bench`` measured; every field in SI units (bytes, seconds, per second)."""

    idle_bytes_per_connection: float
    baseline_fixed_rss_bytes: float  # gunicorn master + supervisor + listener, no clients
    baseline_worker_rss_bytes: float  # one gevent worker, no clients
    cpu_seconds_per_delivery: float  # relay's processes, steady load
    handshakes_per_second_per_worker: float
    postgres_cpu_seconds_per_notification: float
    listener_backend_uss_bytes: float
    notify_commits_per_second: float  # one NOTIFY per transaction, concurrent writers
    old_backend_uss_bytes: float  # per-client-listen: one backend per session
    old_backend_rss_bytes: float
    old_function_cpu_seconds_per_delivery: float
    old_postgres_cpu_seconds_per_notification_per_listener: float
    outbox_bytes_per_message: float | None = None  # issue 13: not measured yet
    outbox_wal_bytes_per_message: float | None = None
    # relay_publish with the durable outbox (make bench's outbox scenario), beyond what the
    # same messages cost sent with pg_notify: a one-message commit, each further message of a
    # commit, cleanup's delete per message; and one-message commits/s, concurrent writers.
    publish_cpu_seconds_per_commit: float | None = None
    publish_cpu_seconds_per_further_message: float | None = None
    outbox_cleanup_cpu_seconds_per_message: float | None = None
    publish_commits_per_second: float | None = None
    runs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# JSON key -> Figures attribute; figures listed in _OPTIONAL_FIGURES may be null.
FIGURE_KEYS: dict[str, str] = {
    "idleBytesPerConnection": "idle_bytes_per_connection",
    "baselineFixedRssBytes": "baseline_fixed_rss_bytes",
    "baselineWorkerRssBytes": "baseline_worker_rss_bytes",
    "cpuSecondsPerDelivery": "cpu_seconds_per_delivery",
    "handshakesPerSecondPerWorker": "handshakes_per_second_per_worker",
    "postgresCpuSecondsPerNotification": "postgres_cpu_seconds_per_notification",
    "listenerBackendUssBytes": "listener_backend_uss_bytes",
    "notifyCommitsPerSecond": "notify_commits_per_second",
    "oldBackendUssBytes": "old_backend_uss_bytes",
    "oldBackendRssBytes": "old_backend_rss_bytes",
    "oldFunctionCpuSecondsPerDelivery": "old_function_cpu_seconds_per_delivery",
    "oldPostgresCpuSecondsPerNotificationPerListener":
        "old_postgres_cpu_seconds_per_notification_per_listener",
    "outboxBytesPerMessage": "outbox_bytes_per_message",
    "outboxWalBytesPerMessage": "outbox_wal_bytes_per_message",
    "publishCpuSecondsPerCommit": "publish_cpu_seconds_per_commit",
    "publishCpuSecondsPerFurtherMessage": "publish_cpu_seconds_per_further_message",
    "outboxCleanupCpuSecondsPerMessage": "outbox_cleanup_cpu_seconds_per_message",
    "publishCommitsPerSecond": "publish_commits_per_second",
}
_OPTIONAL_FIGURES = {"outboxBytesPerMessage", "outboxWalBytesPerMessage",
                     "publishCpuSecondsPerCommit", "publishCpuSecondsPerFurtherMessage",
                     "outboxCleanupCpuSecondsPerMessage", "publishCommitsPerSecond"}


@dataclass(frozen=True)
class Prices:
    """List prices in USD; every monthly amount is 730 hours."""

    fly_shared_vcpu_second: float  # with 256 MB included
    fly_performance_vcpu_second: float  # with 2 GB included
    fly_ram_gb_second: float  # RAM beyond what the vCPUs include
    fly_egress_gb: float  # outbound to the internet, North America and Europe
    neon_cu_hour: float
    neon_storage_gb_month: float
    vercel_memory_gb_hour: float  # provisioned memory, Fluid compute
    vercel_cpu_hour: float  # active CPU
    vercel_invocations_million: float
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


PRICE_KEYS: dict[str, str] = {
    "flySharedVcpuSecond": "fly_shared_vcpu_second",
    "flyPerformanceVcpuSecond": "fly_performance_vcpu_second",
    "flyRamGbSecond": "fly_ram_gb_second",
    "flyEgressGb": "fly_egress_gb",
    "neonCuHour": "neon_cu_hour",
    "neonStorageGbMonth": "neon_storage_gb_month",
    "vercelMemoryGbHour": "vercel_memory_gb_hour",
    "vercelCpuHour": "vercel_cpu_hour",
    "vercelInvocationsMillion": "vercel_invocations_million",
}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SizingError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SizingError(f"{what}: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SizingError(f"{what}: {path} must hold a JSON object")
    return data


def _entries(data: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """A file's entries: ``{"figures": {key: {"value": …}}}`` or a flat ``{key: number}``."""
    inner = data.get(section, data)
    if not isinstance(inner, Mapping):
        raise SizingError(f"'{section}' must be a JSON object")
    return inner


def _number(key: str, raw: Any, where: str, *, optional: bool = False,
            positive: bool = True) -> float | None:
    value = raw.get("value") if isinstance(raw, Mapping) else raw
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SizingError(f"{where}: {key} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise SizingError(f"{where}: {key} must be {'above' if positive else 'at least'} 0, "
                          f"got {value}")
    return float(value)


def load_figures(paths: Iterable[Path]) -> Figures:
    """The figures of the first file, each overlaid by the later files that carry it."""
    values: dict[str, float | None] = {}
    runs: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for path in paths:
        data = _read_json(path, "figures")
        if data.get("format", 1) != 1:
            raise SizingError(f"figures: {path} has format {data.get('format')!r}, expected 1")
        runs.update(data.get("runs", {}))
        for key, raw in _entries(data, "figures").items():
            if key not in FIGURE_KEYS:
                continue  # a figure this version does not use yet (e.g. a new bench scenario)
            values[key] = _number(key, raw, f"figures {path}",
                                  optional=key in _OPTIONAL_FIGURES)
            sources[key] = dict(raw) if isinstance(raw, Mapping) else {"file": str(path)}
    missing = [k for k in FIGURE_KEYS if k not in values and k not in _OPTIONAL_FIGURES]
    if missing:
        raise SizingError(f"figures: missing {', '.join(missing)}")
    return Figures(**{FIGURE_KEYS[k]: v for k, v in values.items()}, runs=runs, sources=sources)


def load_prices(paths: Iterable[Path], overrides: Mapping[str, str] | None = None) -> Prices:
    """Prices of the first file, overlaid by later files, then by ``NAME=VALUE`` overrides."""
    values: dict[str, float] = {}
    sources: dict[str, Any] = {}
    for path in paths:
        for key, raw in _entries(_read_json(path, "prices"), "prices").items():
            if key not in PRICE_KEYS:
                raise SizingError(f"prices {path}: unknown price {key!r} "
                                  f"(known: {', '.join(PRICE_KEYS)})")
            value = _number(key, raw, f"prices {path}", positive=False)
            assert value is not None
            values[key] = value
            sources[key] = dict(raw) if isinstance(raw, Mapping) else {"source": str(path)}
    for key, text in (overrides or {}).items():
        if key not in PRICE_KEYS:
            raise SizingError(f"--price: unknown price {key!r} (known: {', '.join(PRICE_KEYS)})")
        try:
            number = float(text)
        except ValueError:
            raise SizingError(f"--price: {key} must be a number, got {text!r}") from None
        value = _number(key, number, "--price", positive=False)
        assert value is not None
        values[key] = value
        sources[key] = {"source": "--price on the command line"}
    missing = [k for k in PRICE_KEYS if k not in values]
    if missing:
        raise SizingError(f"prices: missing {', '.join(missing)}")
    return Prices(**{PRICE_KEYS[k]: v for k, v in values.items()}, sources=sources)



def mb_text(megabytes: float) -> str:
    if megabytes >= 1024 and megabytes % 1024 == 0:
        return f"{megabytes / 1024:g} GB"
    return f"{megabytes:,.0f} MB"

