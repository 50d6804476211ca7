"""``make bench`` writes the figures file that ``python -m relay size`` reads.

bench/figures.py is tested on a fixture shaped like ``bench.run``'s results (not by running
the benchmark): the file it writes must load with relay.sizing's reader, carry every figure
the run measured with its run's date, commit and machine, and leave out what it did not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.figures import sizing_figures, write_sizing_figures
from relay.sizing import Inputs, size
from relay.sizing_data import (
    FIGURE_KEYS,
    SHIPPED_FIGURES,
    SHIPPED_PRICES,
    load_figures,
    load_prices,
)

RESULTS: dict[str, Any] = {
    "started": 1796000000.0,
    "commit": "abc1234",
    "command": "python -m bench.run",
    "machine": {"nproc": 4, "cpu": "Test CPU", "ramGiB": 8.0, "postgres": "18.4",
                "python": "3.11.7", "kernel": "6.1", "loadAverage": [0, 0, 0]},
    "config": {"workers": 4, "connections": 10_000, "quick": False},
    "database": {"notify": {
        "fsyncOff": {"notify": {"commitsPerSecond": 9000.0, "writers": 8},
                     "plain": {"commitsPerSecond": 20000.0, "writers": 8}},
        "fsyncOn": {"notify": {"commitsPerSecond": 4000.0, "writers": 8},
                    "plain": {"commitsPerSecond": 15000.0, "writers": 8},
                    "notifyWrite": {"commitsPerSecond": 2000.0, "writers": 8},
                    "plainWrite": {"commitsPerSecond": 5000.0, "writers": 8}}}},
    "servers": {
        "relay": {
            "baselineByRole": {"master": [30e6], "supervisor": [20e6], "listener": [40e6],
                               "worker": [50e6, 52e6, 48e6, 50e6]},
            "idle": {"bytesPerConnection": 5000.0, "connections": 10_000},
            "steady": {"serverCpuPer10k": 0.5, "postgresCpuPer10k": 0.2},
            "connect": {"perSecond": 4000.0},
            "db": {"connections": 1, "backendUss": 3e6, "backendRss": 14e6},
        },
        "per-client-listen": {
            "steady": {"serverCpuPer10k": 0.9, "postgresCpuPer10k": 30.0},
            "db": {"connections": 1000, "backendUss": 1.2e9, "backendRss": 12e9},
        },
    },
}


def test_the_written_file_is_what_the_calculator_reads(tmp_path: Path) -> None:
    path = write_sizing_figures(RESULTS, tmp_path / "results" / "sizing.json",
                                "bench-x.json")
    data = json.loads(path.read_text())
    figures = load_figures([path])  # on its own: every required figure is in it
    assert figures.idle_bytes_per_connection == 5000
    assert figures.baseline_fixed_rss_bytes == 90e6  # master + supervisor + listener
    assert figures.baseline_worker_rss_bytes == 50e6  # the mean worker
    assert figures.cpu_seconds_per_delivery == pytest.approx(0.5 / 10_000)
    assert figures.handshakes_per_second_per_worker == 1000  # 4,000/s over 4 workers
    assert figures.postgres_cpu_seconds_per_notification == pytest.approx(0.2 / 10_000)
    assert figures.listener_backend_uss_bytes == 3e6
    # fsync on, each transaction writing a row: it waits for its flush holding the NOTIFY lock
    assert figures.notify_commits_per_second == 2000
    assert figures.old_backend_uss_bytes == 1.2e6
    assert figures.old_backend_rss_bytes == 12e6
    assert figures.old_function_cpu_seconds_per_delivery == pytest.approx(0.9 / 10_000)
    assert figures.old_postgres_cpu_seconds_per_notification_per_listener == pytest.approx(
        30 / 10_000 / 1000)
    assert figures.outbox_bytes_per_message is None
    assert figures.publish_cpu_seconds_per_commit is None
    assert set(data["figures"]) == set(FIGURE_KEYS) - {
        "outboxBytesPerMessage", "outboxWalBytesPerMessage", "publishCpuSecondsPerCommit",
        "publishCpuSecondsPerFurtherMessage", "outboxCleanupCpuSecondsPerMessage",
        "publishCommitsPerSecond"}
    (run_id, run), = data["runs"].items()
    assert all(entry["run"] == run_id for entry in data["figures"].values())
    assert run["commit"] == "abc1234" and run["quick"] is False
    assert run["machine"]["cpu"] == "Test CPU" and run["results"] == "bench-x.json"
    # and the calculator sizes with it
    sizing = size(Inputs(users=10_000), figures, load_prices([SHIPPED_PRICES]))
    assert sizing.fleet.machine.handshakes_per_second == 2 * 1000  # shared-cpu-2x


def test_what_a_run_did_not_measure_is_left_to_the_shipped_figures(tmp_path: Path) -> None:
    partial = copy.deepcopy(RESULTS)
    partial["servers"]["relay"] = {"connect": {"perSecond": 3000.0}}  # --scenarios connect
    partial["servers"]["per-client-listen"] = {"error": "RuntimeError: boom", "db": {
        "connections": 10, "backendUss": 1.0, "backendRss": 1.0}}  # failed: not trusted
    del partial["database"]
    data = sizing_figures(partial)
    assert set(data["figures"]) == {"handshakesPerSecondPerWorker"}
    path = write_sizing_figures(partial, tmp_path / "sizing.json")
    shipped = load_figures([SHIPPED_FIGURES])
    both = load_figures([SHIPPED_FIGURES, path])
    assert both.handshakes_per_second_per_worker == 750
    assert both.old_backend_uss_bytes == shipped.old_backend_uss_bytes


def test_results_from_before_the_written_row_give_the_bare_notify_figure() -> None:
    older = copy.deepcopy(RESULTS)
    for key in ("notifyWrite", "plainWrite"):
        del older["database"]["notify"]["fsyncOn"][key]
    entry = sizing_figures(older)["figures"]["notifyCommitsPerSecond"]
    assert entry["value"] == 4000 and "writing a row" not in entry["how"]


def test_the_notify_figure_from_another_database_wins(tmp_path: Path) -> None:
    external = copy.deepcopy(RESULTS)
    external["database"]["notify"]["external"] = {
        "notify": {"commitsPerSecond": 350.0, "writers": 8},
        "plain": {"commitsPerSecond": 3000.0, "writers": 8}}
    entry = sizing_figures(external)["figures"]["notifyCommitsPerSecond"]
    assert entry["value"] == 350 and "--notify-dsn" in entry["how"]
    # relay's SQL installed there: its relay_publish ceiling wins over the embedded one
    external["database"]["notify"]["external"]["publishWrite"] = {
        "commitsPerSecond": 120.0, "writers": 8}
    external["database"]["outbox"] = {"commitCeiling": {
        "writers": 8, "publish": {"commitsPerSecond": 900.0},
        "notify": {"commitsPerSecond": 2000.0}}}
    entry = sizing_figures(external)["figures"]["publishCommitsPerSecond"]
    assert entry["value"] == 120 and "--notify-dsn" in entry["how"]
    del external["database"]["notify"]["external"]["publishWrite"]
    assert sizing_figures(external)["figures"]["publishCommitsPerSecond"]["value"] == 900


def test_the_outbox_scenario_gives_relay_publishs_database_figures(tmp_path: Path) -> None:
    with_outbox = copy.deepcopy(RESULTS)
    with_outbox["database"]["outbox"] = {
        "fsync": "on", "payloadBytes": 240, "outboxBytesPerRow": 430, "walBytesPerMessage": 540,
        "backendCpu": {"usPerTransaction": {"base": 20.0, "notify": 33.0, "publish": 233.0,
                                            "publish5": 613.0},
                       "addedUs": 200.0, "addedUsPerFurtherMessage": 82.0},
        "commitCeiling": {"writers": 8, "publish": {"commitsPerSecond": 1800.0},
                          "notify": {"commitsPerSecond": 5000.0}},
        "cleanup": {"walBytesPerRow": 70, "msPer1000Rows": 8.5}}
    figures = load_figures([write_sizing_figures(with_outbox, tmp_path / "sizing.json")])
    assert figures.publish_cpu_seconds_per_commit == pytest.approx(200e-6)
    assert figures.publish_cpu_seconds_per_further_message == pytest.approx(82e-6)
    assert figures.outbox_cleanup_cpu_seconds_per_message == pytest.approx(8.5e-6)
    assert figures.publish_commits_per_second == 1800
    assert figures.outbox_wal_bytes_per_message == 610  # the message's and cleanup's
    # the calculator counts them: 1,000 one-message commits/s
    sizing = size(Inputs(users=60_000, peak_rate=1000), figures, load_prices([SHIPPED_PRICES]))
    assert sizing.database.relay_sql_vcpu_at_peak == pytest.approx(1000 * (200e-6 + 8.5e-6))
    assert sizing.database.commit_ceiling == 1800


def test_a_failed_outbox_scenario_gives_no_figures() -> None:
    failed = copy.deepcopy(RESULTS)
    failed["database"]["outbox"] = {"error": "psycopg2.OperationalError: boom",
                                    "backendCpu": {"addedUs": 200.0}}
    assert not {"publishCpuSecondsPerCommit", "publishCommitsPerSecond"} & set(
        sizing_figures(failed)["figures"])


def test_postgres_cpu_per_notification_leaves_out_the_writers_own_statement() -> None:
    """The steady scenario's PostgreSQL CPU counts the writer's backends, which also run the
    bench's own statement (the app's cost in either design): the figure takes PostgreSQL's
    other processes per message, plus what a NOTIFY adds to a transaction when the outbox
    scenario measured it."""
    split = copy.deepcopy(RESULTS)
    split["servers"]["relay"]["steady"].update({
        "committed": 200_000, "postgresCpuPer10k": 0.8,
        "cpuSplit": {"postgres": 4.0, "writerBackends": 12.0, "listener": 6.0}})
    entry = sizing_figures(split)["figures"]["postgresCpuSecondsPerNotification"]
    assert entry["value"] == pytest.approx(20e-6)  # 4.0 CPU-s / 200,000, writers left out
    split["database"]["outbox"] = {"backendCpu": {"usPerTransaction": {
        "base": 19.0, "notify": 35.0, "publish": 230.0, "publish5": 600.0}}}
    entry = sizing_figures(split)["figures"]["postgresCpuSecondsPerNotification"]
    assert entry["value"] == pytest.approx(36e-6)  # + the NOTIFY's own 16 us
    assert "outbox scenario" in entry["how"]
