"""The sizing calculator (relay/sizing.py, `python -m relay size`): its arithmetic on fixed
figures, its refusals, and that fly.toml and docs/cost.md say what it computes.

Pure and in-process: no database, no relay. The figures below are round numbers chosen so
that each expected value can be worked out by hand; the shipped figures are used only where
the test is about the shipped files (fly.toml, docs/cost.md)."""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from relay import cli
from relay.sizing import Inputs, machine_settings, reconnect_seconds, size
from relay.sizing_data import (
    MIB,
    PRESETS,
    SECONDS_PER_MONTH,
    SHIPPED_FIGURES,
    SHIPPED_PRICES,
    Figures,
    Prices,
    SizingError,
    load_figures,
    load_prices,
    smallest_neon_compute,
)
from tests.support import ROOT

FIGURES = Figures(
    idle_bytes_per_connection=8192,
    baseline_fixed_rss_bytes=100 * MIB,
    baseline_worker_rss_bytes=50 * MIB,
    cpu_seconds_per_delivery=1e-4,
    handshakes_per_second_per_worker=1000,
    postgres_cpu_seconds_per_notification=1e-5,
    listener_backend_uss_bytes=2e6,
    notify_commits_per_second=5000,
    old_backend_uss_bytes=1e6,
    old_backend_rss_bytes=1e7,
    old_function_cpu_seconds_per_delivery=1e-4,
    old_postgres_cpu_seconds_per_notification_per_listener=1e-6,
)
PRICES = Prices(
    fly_shared_vcpu_second=1e-6, fly_performance_vcpu_second=1e-5, fly_ram_gb_second=2e-6,
    fly_egress_gb=0.02, neon_cu_hour=0.1, neon_storage_gb_month=0.5,
    vercel_memory_gb_hour=0.01, vercel_cpu_hour=0.1, vercel_invocations_million=1.0)
# 8,192 measured + 8,192 allowance = 16 KiB per connection: 64 connections per MiB.
INPUTS = Inputs(users=1000, connections_per_user=1.0, allowance_bytes_per_connection=8192,
                usable_memory_share=1.0, history_bytes=50 * MIB, reconnect_seconds=30)


def settings_for(machine: str, memory_mb: int, **changes: object):
    return machine_settings(PRESETS[machine], memory_mb, FIGURES, replace(INPUTS, **changes),
                            PRICES)


# ----- one machine -----------------------------------------------------------------------------


def test_memory_bound_machine_gets_the_largest_round_worker_connections_that_fit() -> None:
    m = settings_for("shared-cpu-2x", 512)
    # 512 MiB − 100 − 2 × 50 − 50 (history) = 262 MiB → 262 × 64 = 16,768 connections,
    # 8,384 per worker; RELAY_WORKER_CONNECTIONS 8,000 keeps 7,920 (8,500 would keep 8,415).
    assert m.bound_by == "memory"
    assert (m.workers, m.worker_connections, m.websockets_per_worker) == (2, 8000, 7920)
    assert m.websockets_per_machine == 15_840
    assert m.hard_limit == 15_000  # 96 % = 15,206, two significant figures, down
    assert m.soft_limit == 13_000  # 80 % = 12,672, two significant figures, nearest
    assert m.memory_at_hard_limit_bytes == 250 * MIB + 15_000 * 16384
    # 2 shared vCPUs, which include 256 MB each: nothing more to pay for, 730 hours
    assert m.month_usd == pytest.approx(2 * 1e-6 * SECONDS_PER_MONTH)


def test_reconnect_window_bounds_the_connections_per_worker() -> None:
    m = settings_for("shared-cpu-2x", 1024, reconnect_seconds=5)
    # 5 s × 1,000 handshakes/s per worker = 5,000 → RELAY_WORKER_CONNECTIONS 5000 (4,950 kept)
    assert m.bound_by.startswith("the 5 s reconnect window")
    assert (m.worker_connections, m.websockets_per_worker) == (5000, 4950)
    assert reconnect_seconds(m.websockets_per_machine, m, fresh=False) == pytest.approx(4.95)


def test_worker_connections_never_exceed_the_ceiling() -> None:
    m = settings_for("performance-2x", 8192)
    assert m.bound_by.startswith("its ceiling")
    assert (m.worker_connections, m.websockets_per_machine) == (10_000, 19_800)
    assert (m.soft_limit, m.hard_limit) == (16_000, 19_000)
    # 2 performance vCPUs include 2 GB each: 4 GB more to pay for
    assert m.month_usd == pytest.approx((2 * 1e-5 + 4 * 2e-6) * SECONDS_PER_MONTH)


def test_a_machine_that_cannot_hold_one_workers_connections_is_refused() -> None:
    # 256 MiB − 100 − 50 − 50 = 56 MiB: 3,584 connections would fit, but not with 150 MiB of
    # history; and the refusal names what to change.
    with pytest.raises(SizingError, match=r"shared-cpu-1x with 256 MB cannot hold even one "
                                          r"worker's connections.*--memory.*--history-mb"):
        settings_for("shared-cpu-1x", 256, history_bytes=150 * MIB)


def test_auto_skips_sizes_that_cannot_run_relay_and_picks_the_cheapest() -> None:
    sizing = size(replace(INPUTS, machine="auto", history_bytes=150 * MIB), FIGURES, PRICES)
    assert sizing.fleet.machine.memory_mb > 256
    costs = []
    for preset in PRESETS.values():
        for memory in preset.memory_tiers_mb:
            try:
                one = size(replace(INPUTS, machine=preset.name, memory_mb=memory,
                                   history_bytes=150 * MIB), FIGURES, PRICES)
            except SizingError:
                continue
            costs.append(one.fly_month_usd)
    assert sizing.fly_month_usd == pytest.approx(min(costs))


def test_a_fresh_shared_machine_reconnects_at_its_baseline_once_the_burst_is_spent() -> None:
    m = settings_for("shared-cpu-2x", 1024)
    rate = 2 * 1000  # handshakes/s of the machine
    burst = 5 / (1 - 5 / 80)  # 5 s of balance, spent only above the 6.25 % baseline
    expected = burst + (19_000 - rate * burst) / (rate * 5 / 80)
    assert reconnect_seconds(19_000, m, fresh=True) == pytest.approx(expected)
    assert reconnect_seconds(19_000, m, fresh=False) == pytest.approx(9.5)
    assert reconnect_seconds(1_000, m, fresh=True) == pytest.approx(0.5)  # within the burst
    perf = settings_for("performance-2x", 4096)
    assert reconnect_seconds(19_000, perf, fresh=True) == pytest.approx(9.5)


# ----- the fleet -------------------------------------------------------------------------------


def test_users_below_one_machine_get_one_machine_or_the_minimum() -> None:
    sizing = size(replace(INPUTS, users=10, machine="shared-cpu-2x", memory_mb=1024),
                  FIGURES, PRICES)
    assert (sizing.fleet.machines, sizing.fleet.machines_for_connections) == (1, 1)
    assert sizing.database.connections == 1
    two = size(replace(INPUTS, users=10, machine="shared-cpu-2x", memory_mb=1024,
                       min_machines=2), FIGURES, PRICES)
    assert (two.fleet.machines, two.fleet.set_by) == (2, "the minimum")
    assert two.database.connections == 2


def test_connections_set_the_machine_count_through_the_soft_limit() -> None:
    sizing = size(replace(INPUTS, users=40_000, machine="shared-cpu-2x", memory_mb=1024,
                          peak_rate=0), FIGURES, PRICES)
    assert sizing.fleet.machine.soft_limit == 16_000
    assert sizing.fleet.machines == 3  # 40,000 / 16,000
    assert sizing.fleet.set_by == "connections"


def test_a_rate_above_one_machines_delivery_ceiling_adds_machines_for_cpu() -> None:
    sizing = size(replace(INPUTS, users=100, peak_rate=10_000, machine="shared-cpu-2x",
                          memory_mb=1024), FIGURES, PRICES)
    # (10,000 deliveries + 100 / 20 s heartbeats) × 100 µs = 1.0005 vCPU-s per second, against
    # 2 vCPUs × 6.25 % × 0.7 = 0.0875 per machine → 12 machines, though 1 holds the users.
    assert sizing.fleet.machines_for_connections == 1
    assert sizing.fleet.machines == sizing.fleet.machines_for_cpu == math.ceil(1.0005 / 0.0875)
    assert sizing.fleet.set_by == "deliveries"
    assert any("deliveries, not connections" in note for note in sizing.notes)
    assert sizing.fleet.cpu_share_of_quota <= 0.7


def test_the_database_side_one_connection_per_machine_and_the_notify_ceiling() -> None:
    notify = replace(INPUTS, users=40_000, peak_rate=6_000, notifications_per_commit=1,
                     machine="shared-cpu-2x", memory_mb=1024, publishing="notify")
    sizing = size(notify, FIGURES, PRICES)
    db = sizing.database
    assert db.connections == sizing.fleet.machines
    assert db.compute_month_usd == pytest.approx(0.25 * 730 * 0.1)
    assert (db.commits_per_second, db.commit_ceiling) == (6000, 5000)
    assert any("exceed the measured ceiling (5,000/s): writers would queue on PostgreSQL's "
               "NOTIFY queue lock" in note for note in sizing.notes)
    batched = size(replace(notify, notifications_per_commit=5), FIGURES, PRICES)
    assert batched.database.commits_per_second == 1200
    assert not any("measured ceiling" in note for note in batched.notes)


# relay_publish with the durable outbox, as make bench's outbox scenario measures it.
PUBLISH = replace(FIGURES, publish_cpu_seconds_per_commit=200e-6,
                  publish_cpu_seconds_per_further_message=80e-6,
                  outbox_cleanup_cpu_seconds_per_message=10e-6, publish_commits_per_second=2000)


def test_relay_publish_costs_the_database_per_commit_and_per_further_message() -> None:
    one = size(replace(INPUTS, peak_rate=1000), PUBLISH, PRICES).database
    # 1,000 commits: 200 us each, and cleanup's 10 us per message
    assert one.relay_sql_vcpu_at_peak == pytest.approx(0.21)
    assert one.notify_vcpu_at_peak == pytest.approx(1000 * 1e-5)
    assert one.postgres_vcpu_at_peak == pytest.approx(0.22)
    # its average (half the peak, INPUTS' default share) as autoscaled compute
    assert one.relay_sql_month_usd == pytest.approx(0.21 * 0.5 * 730 * 0.1)
    five = size(replace(INPUTS, peak_rate=1000, notifications_per_commit=5), PUBLISH,
                PRICES).database
    # 200 commits at 200 us, 800 further messages at 80 us, cleanup 10 us each
    assert five.relay_sql_vcpu_at_peak == pytest.approx(0.04 + 0.064 + 0.01)
    sizing = size(replace(INPUTS, peak_rate=1000), PUBLISH, PRICES)
    without = size(replace(INPUTS, peak_rate=1000, publishing="notify"), PUBLISH, PRICES)
    assert sizing.month_usd == pytest.approx(without.month_usd + one.relay_sql_month_usd)
    # the app's own pg_notify: no relay_publish, no outbox
    assert without.database.relay_sql_vcpu_at_peak == 0
    assert without.database.relay_sql_month_usd == 0
    assert without.database.outbox is None
    assert without.database.postgres_vcpu_at_peak == pytest.approx(0.01)


def test_relay_publish_has_its_own_commit_ceiling() -> None:
    busy = replace(INPUTS, users=40_000, peak_rate=3000, machine="shared-cpu-2x",
                   memory_mb=1024)
    sizing = size(busy, PUBLISH, PRICES)
    assert (sizing.database.commit_ceiling, sizing.database.commit_ceiling_measured) == (
        2000, True)
    assert any("(2,000/s, relay_publish): writers would queue on relay's commit lock" in note
               for note in sizing.notes)
    # the same rate with the app's own pg_notify stays under pg_notify's ceiling (5,000/s)
    assert not any("measured ceiling" in note
                   for note in size(replace(busy, publishing="notify"), PUBLISH, PRICES).notes)


def test_unmeasured_relay_publish_figures_are_said_not_guessed() -> None:
    sizing = size(replace(INPUTS, peak_rate=1000), FIGURES, PRICES)
    db = sizing.database
    assert db.relay_sql_vcpu_at_peak is None and db.relay_sql_month_usd == 0
    assert (db.commit_ceiling, db.commit_ceiling_measured) == (5000, False)
    assert any("relay_publish's CPU in the database is not measured" in n for n in sizing.notes)
    assert any("relay_publish's commit ceiling is not measured" in n for n in sizing.notes)
    notify = size(replace(INPUTS, peak_rate=1000, publishing="notify"), FIGURES, PRICES)
    assert not any("relay_publish" in note for note in notify.notes)


def test_database_cpu_beyond_the_compute_relay_keeps_awake_is_pointed_out() -> None:
    sizing = size(replace(INPUTS, peak_rate=1000), PUBLISH, PRICES)  # 0.22 vCPU of 0.25 CU
    assert not any("more than the 0.25 CU compute" in note for note in sizing.notes)
    busier = size(replace(INPUTS, peak_rate=2000), PUBLISH, PRICES)  # 0.44
    assert any("take 0.44 vCPU of the database, more than the 0.25 CU compute" in note
               and "--notifications-per-commit" in note for note in busier.notes)


def test_the_outbox_line_waits_for_its_measurement() -> None:
    sizing = size(INPUTS, FIGURES, PRICES)
    assert sizing.database.outbox is None
    assert any("issue 13" in note for note in sizing.notes)
    measured = replace(FIGURES, outbox_bytes_per_message=500, outbox_wal_bytes_per_message=1000)
    outbox = size(replace(INPUTS, peak_rate=100, average_share=0.5, outbox_retention_hours=24),
                  measured, PRICES).database.outbox
    assert outbox is not None
    assert outbox.table_bytes == 50 * 86_400 * 500  # average 50/s kept a day
    assert outbox.wal_bytes_per_day == 50 * 86_400 * 1000
    assert outbox.month_usd == pytest.approx(outbox.table_bytes / 1e9 * 0.5)


# ----- the old design --------------------------------------------------------------------------


def test_old_design_needs_a_compute_whose_connection_limit_holds_every_session() -> None:
    assert smallest_neon_compute(97) == 0.25  # 104 − 7 reserved
    assert smallest_neon_compute(98) == 0.5
    assert smallest_neon_compute(1_500) == 4  # 1,678
    assert smallest_neon_compute(3_993) == 9  # 4,000 from 9 CU up
    assert smallest_neon_compute(3_994) is None
    sizing = size(replace(INPUTS, users=1_500, peak_rate=10), FIGURES, PRICES)
    old = sizing.old
    assert (old.sessions, old.neon_cu) == (1_500, 4)
    assert old.neon_month_usd == pytest.approx(4 * 730 * 0.1)
    assert old.backend_uss_bytes == 1_500 * 1e6
    assert old.postgres_vcpu_at_peak == pytest.approx(10 * 1_500 * 1e-6)
    # 750 sessions on average × 730 h × 1 GB / 1 per instance, CPU for the average deliveries,
    # and one invocation per 800 s per session.
    assert old.function_gb_hours == pytest.approx(750 * 730)
    assert old.function_cpu_hours == pytest.approx(5 * SECONDS_PER_MONTH * 1e-4 / 3600)
    assert old.invocations == pytest.approx(750 * SECONDS_PER_MONTH / 800)
    assert old.vercel_month_usd == pytest.approx(
        750 * 730 * 0.01 + old.function_cpu_hours * 0.1 + old.invocations / 1e6)
    assert sizing.reduction == pytest.approx(1 - sizing.month_usd / old.month_usd)


def test_old_design_beyond_neons_largest_connection_limit_cannot_run() -> None:
    sizing = size(replace(INPUTS, users=5_000), FIGURES, PRICES)
    assert sizing.old.neon_cu is None and sizing.old.month_usd is None
    assert sizing.reduction is None
    assert any("old design cannot run" in note and "never delivers LISTEN" in note
               for note in sizing.notes)


def test_prices_are_inputs_not_constants() -> None:
    base = size(INPUTS, FIGURES, PRICES)
    free = size(INPUTS, FIGURES, Prices(**{k: 0.0 for k in vars(PRICES) if k != "sources"}))
    assert base.month_usd > 0 and free.month_usd == 0 and free.old.vercel_month_usd == 0
    doubled = size(INPUTS, FIGURES, Prices(**{k: 2 * v for k, v in vars(PRICES).items()
                                               if k != "sources"}))
    assert doubled.month_usd == pytest.approx(2 * base.month_usd)
    assert doubled.old.month_usd == pytest.approx(2 * base.old.month_usd)


# ----- data files --------------------------------------------------------------------------------


def test_figures_files_overlay_the_shipped_ones_figure_by_figure(tmp_path: Path) -> None:
    newer = tmp_path / "sizing.json"
    newer.write_text(json.dumps({"format": 1, "runs": {"r": {"date": "2027-01-01"}}, "figures": {
        "cpuSecondsPerDelivery": {"value": 2e-5, "run": "r"},
        "aFigureFromAFutureScenario": {"value": 1, "run": "r"}}}))
    shipped = load_figures([SHIPPED_FIGURES])
    both = load_figures([SHIPPED_FIGURES, newer])
    assert both.cpu_seconds_per_delivery == 2e-5
    assert both.idle_bytes_per_connection == shipped.idle_bytes_per_connection
    assert both.sources["cpuSecondsPerDelivery"]["run"] == "r"
    assert "r" in both.runs


def test_prices_can_be_overridden_by_file_and_by_flag(tmp_path: Path) -> None:
    mine = tmp_path / "prices.json"
    mine.write_text(json.dumps({"neonCuHour": 0.26}))
    prices = load_prices([SHIPPED_PRICES, mine], {"flyEgressGb": "0"})
    assert (prices.neon_cu_hour, prices.fly_egress_gb) == (0.26, 0.0)
    assert prices.vercel_cpu_hour == load_prices([SHIPPED_PRICES]).vercel_cpu_hour


def test_every_shipped_price_and_figure_says_where_it_comes_from() -> None:
    prices = json.loads(SHIPPED_PRICES.read_text())["prices"]
    for name, entry in prices.items():
        assert entry["source"].startswith("https://"), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["read"]), name
    figures = json.loads(SHIPPED_FIGURES.read_text())
    for name, entry in figures["figures"].items():
        if entry["value"] is None:
            assert "TODO(issue 13)" in entry["how"], name
            continue
        run = figures["runs"][entry["run"]]
        assert run["date"] and run["commit"] and run["machine"]["cpu"], name


# ----- refusals: one clear line ------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--users", "-5"], "--users: must be at least 1, got -5"),
    (["--users", "0"], "--users: must be at least 1, got 0"),
    (["--users", "ten"], "--users: expected a whole number, got 'ten'"),
    ([], "--users: required"),
    (["--users", "10", "--machine", "shared-cpu-3x"], "--machine: unknown Fly preset"),
    (["--users", "10", "--memory", "5gb"], "--memory: shared-cpu-2x takes 512 MB to 4 GB"),
    (["--users", "10", "--memory", "lots"], "--memory: expected a size such as 1gb"),
    (["--users", "10", "--reconnect-seconds", "0"], "--reconnect-seconds: must be above 0"),
    (["--users", "10", "--peak-rate", "-1"], "--peak-rate: must be 0 or more"),
    (["--users", "10", "--notifications-per-commit", "0"],
     "--notifications-per-commit: must be above 0"),
    (["--users", "10", "--connections-per-user", "0"],
     "--connections-per-user: must be at least 1"),
    (["--users", "10", "--neon-cu", "0.3"], "--neon-cu: must be a Neon compute size"),
    (["--users", "10", "--publishing", "kafka"],
     "--publishing: must be one of outbox, notify, got 'kafka'"),
    (["--users", "10", "--price", "neonCuHour=-1"], "neonCuHour must be at least 0, got -1"),
    (["--users", "10", "--price", "gold=1"], "--price: unknown price 'gold'"),
    (["--users", "10", "--table"], "--table: sizes 1,000, 10,000 and 100,000 users"),
])
def test_nonsense_is_refused_with_one_line(args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["size", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("relay: size: ") and message in err, err


def test_a_figures_file_with_a_zero_rate_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "sizing.json"
    bad.write_text(json.dumps({"figures": {"handshakesPerSecondPerWorker": {"value": 0}}}))
    assert cli.main(["size", "--users", "10", "--figures", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "handshakesPerSecondPerWorker must be above 0, got 0" in err


# ----- the shipped files agree with the calculation ----------------------------------------------


def test_fly_toml_settings_follow_from_the_calculation_for_its_machine() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    vm = fly["vm"][0]
    memory = re.fullmatch(r"(\d+)(gb|mb)", vm["memory"])
    assert memory, vm["memory"]
    memory_mb = int(memory.group(1)) * (1024 if memory.group(2) == "gb" else 1)
    m = machine_settings(PRESETS[vm["size"]], memory_mb, load_figures([SHIPPED_FIGURES]),
                         Inputs(users=1), load_prices([SHIPPED_PRICES]))
    concurrency = fly["http_service"]["concurrency"]
    assert int(fly["env"]["WEB_CONCURRENCY"]) == m.workers
    assert int(fly["env"]["RELAY_WORKER_CONNECTIONS"]) == m.worker_connections
    assert (concurrency["soft_limit"], concurrency["hard_limit"]) == (m.soft_limit, m.hard_limit)
    assert "python -m relay size" in (ROOT / "fly.toml").read_text()


def test_cost_doc_table_is_the_commands_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["size", "--table"]) == 0
    printed = capsys.readouterr().out.strip()
    doc = (ROOT / "docs" / "cost.md").read_text()
    block = re.search(r"<!-- size --table: begin[^>]*-->\n(.*?)\n<!-- size --table: end -->",
                      doc, re.S)
    assert block, "docs/cost.md has no generated block"
    assert block.group(1).strip() == printed, (
        "docs/cost.md's table differs from `python -m relay size --table`: paste its output")


def test_the_report_names_every_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["size", "--users", "10000", "--machine", "shared-cpu-2x",
                     "--memory", "1gb"]) == 0
    out = capsys.readouterr().out
    for words in ("1 × shared-cpu-2x, 1 GB", "WEB_CONCURRENCY           2",
                  "RELAY_WORKER_CONNECTIONS  10000", "soft_limit = 16000, hard_limit = 19000",
                  "headroom", "full reconnect", "one LISTEN per machine", "never suspends",
                  "of the measured ceiling", "publishing", "relay_publish's numbering",
                  "relay_publish's compute", "smallest Neon compute", "Vercel functions",
                  "reduction", "figures: ", "prices: "):
        assert words in out, words
