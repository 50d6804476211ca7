"""The design relay replaced, priced for the same load: one PostgreSQL connection and one
long-lived serverless function (Vercel) per open browser session.

``old_design`` is the same arithmetic over the same ``Inputs``, ``Figures`` and ``Prices`` as
relay's own sizing (relay/sizing.py, which puts it next to relay's bill: ``Sizing.old``,
``Sizing.reduction``); ``old_design_notes`` says when that design cannot run at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.sizing_data import (
    HOURS_PER_MONTH,
    NEON_LARGE_COMPUTE,
    NEON_RESERVED_CONNECTIONS,
    SECONDS_PER_MONTH,
    Figures,
    Prices,
    smallest_neon_compute,
)
from relay.sizing_inputs import Inputs


@dataclass(frozen=True)
class OldDesign:
    sessions: int  # at peak: one function and one PostgreSQL connection each
    average_sessions: float
    backend_uss_bytes: float
    backend_rss_bytes: float
    neon_cu: float | None  # the smallest compute whose max_connections holds them
    neon_month_usd: float | None
    postgres_vcpu_at_peak: float  # linear from the 1,000-backend measurement
    function_gb_hours: float
    function_cpu_hours: float
    invocations: float
    vercel_month_usd: float

    @property
    def month_usd(self) -> float | None:
        if self.neon_month_usd is None:
            return None
        return self.neon_month_usd + self.vercel_month_usd


def old_design(sessions: int, rate: float, figures: Figures, inputs: Inputs,
                prices: Prices) -> OldDesign:
    average = sessions * inputs.average_share
    cu = smallest_neon_compute(sessions)
    deliveries_per_month = rate * inputs.connections_per_user * inputs.average_share \
        * SECONDS_PER_MONTH
    gb_hours = average * HOURS_PER_MONTH * inputs.old_function_memory_gb \
        / inputs.old_sessions_per_instance
    cpu_hours = deliveries_per_month * figures.old_function_cpu_seconds_per_delivery / 3600
    invocations = average * SECONDS_PER_MONTH / inputs.old_max_duration_s
    vercel = (gb_hours * prices.vercel_memory_gb_hour + cpu_hours * prices.vercel_cpu_hour
              + invocations / 1e6 * prices.vercel_invocations_million)
    return OldDesign(
        sessions=sessions, average_sessions=average,
        backend_uss_bytes=sessions * figures.old_backend_uss_bytes,
        backend_rss_bytes=sessions * figures.old_backend_rss_bytes,
        neon_cu=cu,
        neon_month_usd=None if cu is None else cu * HOURS_PER_MONTH * prices.neon_cu_hour,
        postgres_vcpu_at_peak=rate * sessions
        * figures.old_postgres_cpu_seconds_per_notification_per_listener,
        function_gb_hours=gb_hours, function_cpu_hours=cpu_hours, invocations=invocations,
        vercel_month_usd=vercel)


def old_design_notes(old: OldDesign) -> list[str]:
    """What the comparison must say beside its figures: why the old design cannot run."""
    if old.neon_cu is None:
        return [
            f"the old design cannot run: {old.sessions:,} LISTEN connections, and no Neon "
            f"compute allows more than {NEON_LARGE_COMPUTE[2] - NEON_RESERVED_CONNECTIONS:,}"
            " (a pooler accepts more clients but never delivers LISTEN)"]
    if old.postgres_vcpu_at_peak > old.neon_cu:
        return [
            f"the old design's PostgreSQL would need {old.postgres_vcpu_at_peak:,.1f} vCPUs "
            f"at the peak rate (every commit wakes all {old.sessions:,} listening backends), "
            f"more than its {old.neon_cu:g} CU compute has"]
    return []
