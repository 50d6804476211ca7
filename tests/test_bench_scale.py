"""The scale benchmark's own logic, on fixtures (not by running it): its clients speak the
protocol relay reads and back off as the JS client does, and its verdicts read the figures
the way docs/performance.md states the targets."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import scale, stormwatch, sweep
from bench.clientwire import backoff_delay, cursors_after, loopback_sources, masked, server_frame
from bench.loopprobe import worst_lag
from relay.worker.websocket import FrameReader, text_frame

ROOT = Path(__file__).resolve().parent.parent


def test_the_storm_backs_off_as_the_js_client_does() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js")
    # client/src/backoff.js with a fixed draw: its first ten waits, in ms.
    script = ("import { createBackoff } from './client/src/backoff.js';"
              "const b = createBackoff({ random: () => 0.75 });"
              "console.log(JSON.stringify(Array.from({ length: 10 }, () => b.next())));")
    done = subprocess.run([node, "--input-type=module", "-e", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=True)
    js = json.loads(done.stdout)
    ours = [backoff_delay(n, 0.5, 30.0, 0.75) * 1000 for n in range(10)]
    assert [int(ms) for ms in ours] == js  # JS floors to whole ms
    assert js[-1] == int(0.75 * 30_000)  # the cap binds


def test_client_frames_are_what_relay_reads() -> None:
    auth = json.dumps({"type": "auth", "token": "t" * 300, "resume": {"a": "x:1"}}).encode()
    stream = masked(0x1, auth) + masked(0x1, b'{"type":"pong"}') + masked(0x8, b"\x03\xf4")
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = stream[position:position + n]
        position += len(chunk)
        return chunk

    reader = FrameReader(read, 1 << 16)
    assert reader.next_event().text == auth.decode()
    assert reader.next_event().text == '{"type":"pong"}'
    close = reader.next_event()
    assert close.kind == "close" and close.close_code == 1012


def test_server_frames_are_parsed_whole_or_not_at_all() -> None:
    frames = bytearray(text_frame(b"x" * 200) + text_frame(b"y"))
    assert server_frame(frames[:100]) is None  # the first frame has not all arrived
    opcode, payload, used = server_frame(frames)
    assert (opcode, payload) == (0x1, b"x" * 200)
    assert server_frame(frames[used:])[1] == b"y"


def test_a_resumed_channel_keeps_its_cursor_until_the_server_moves_it() -> None:
    connected = {"cursors": {"user_Subscription_1": "e2:9", "user_Usage_1": "e2:4"}}
    assert cursors_after(connected, {"user_Subscription_1": "e1:7"}) == {
        "user_Subscription_1": "e1:7", "user_Usage_1": "e2:4"}
    assert cursors_after({"cursors": None}, {}) == {}


def test_the_loop_probe_reads_back_the_worst_stall_of_a_stretch(tmp_path: Path) -> None:
    (tmp_path / "101.lag").write_text("100.0 101.0 3.00 0.00 0 1.0\n"
                                      "101.0 102.0 640.00 610.50 1 2900.0\n"
                                      "102.0 103.0 9.00 0.00 0\n103.0 10")  # a line in writing
    (tmp_path / "102.lag").write_text("100.5 101.5 120.00 0.00 0\n")
    stretch = worst_lag(tmp_path, 100.2, 101.2)
    assert stretch["worstMs"] == 640.0 and stretch["worstFullCollectionMs"] == 610.5
    assert stretch["worstReadyWaitMs"] == 2900.0
    assert stretch["windowsOver100Ms"] == 2 and stretch["windowsOver500Ms"] == 1
    assert [spike[1] for spike in stretch["spikes"]] == [102, 101]  # in time order
    assert worst_lag(tmp_path, 102.5, 103.0)["worstMs"] == 9.0


def test_the_storm_rate_is_taken_until_most_clients_are_back() -> None:
    # 1,000 clients: 900 back within 2 s of the first, the last 100 trickling for 30 s.
    by_second = {1000: 400, 1001: 500, **{1002 + i: 10 for i in range(10)}}
    assert scale.bulk_rate(by_second, 1000, 1000.0) == pytest.approx(450.0)
    assert scale.bulk_rate({1000: 10}, 1000, 1000.0) is None  # never got there


def _point(asked: float, cpu: float, p99: float, kept: bool = True, lost: int = 0
           ) -> dict[str, Any]:
    return {"asked": asked, "committedPerSecond": asked, "deliveredPerSecond": asked,
            "serverCpuPer10k": cpu, "latencyMs": {"p99": p99}, "keptUp": kept, "lost": lost}


def test_the_sweep_judges_the_ceiling_and_the_cpu_ratio_under_load() -> None:
    results = {"config": {"ceilingP99Ms": 50.0}, "servers": {
        "relay": {"rates": [_point(1_000, 2.0, 3.0), _point(10_000, 0.36, 6.0),
                            _point(20_000, 0.25, 40.0), _point(25_000, 0.22, 48.0)]},
        "node-ws": {"rates": [_point(1_000, 0.5, 20.0), _point(10_000, 0.30, 60.0),
                              _point(20_000, 0.20, 140.0), _point(25_000, 0.18, 700.0)]}}}
    lines = sweep.ceiling_lines(results)
    assert "relay kept up with nothing lost and p99 <= 50 ms up to 25,000/s" in lines[0]
    assert lines[0].endswith("target met")
    assert "node-ws kept up with nothing lost and p99 <= 50 ms up to 1,000/s" in lines[1]
    # 4x at 1,000/s is not judged; from 10,000/s the worst is 1.25x (20,000/s): met.
    assert lines[2].endswith("target <= 1.25x: met (worst 1.25x from 10,000/s)")
    results["servers"]["relay"]["rates"][-1] = _point(25_000, 0.22, 48.0, lost=3)
    assert sweep.ceiling_lines(results)[0].endswith("target NOT met")


def test_the_scale_table_marks_each_target(tmp_path: Path) -> None:
    results = {
        "machine": {"nproc": 2, "cpu": "Test", "ramGiB": 8, "postgres": "18.4",
                    "python": "3.11", "loadAverage": [0.5, 0, 0]},
        "loadAverageAfter": [1.0, 0, 0],
        "scale": {"config": {"connections": 100_000, "workers": 6, "loadgens": 7,
                             "user_channels": "off"},
                  "workerConnections": 19_900, "publish": "publish",
                  "phases": {
                      "openFirst": {"opened": 1_000, "failures": {}},
                      "openRest": {"opened": 99_000, "failures": {}},
                      "idle": {"held": 100_000, "asked": 100_000, "bytesPerConnection": 5_200},
                      "dbFirst": {"users": 1_000, "backendUsPerNotification": 20.0,
                                  "listenerUsPerNotification": 10.0},
                      "dbAll": {"users": 100_000, "backendUsPerNotification": 22.0,
                                "listenerUsPerNotification": 16.0, "committed": 10,
                                "delivered": 10},
                      "burst": {"users": 50_000, "lastSeconds": 1.5, "lost": 0},
                  }}}
    rows = {label: (value, verdict) for label, value, _, verdict in scale.rows(results["scale"])}
    assert rows["idle: connections held"] == ("100,000", "met")
    assert rows["idle: RSS per connection KB (1k → all)"] == ("5.20", "NOT met")
    assert rows["db: PostgreSQL backend growth (x)"] == ("1.10", "met")
    assert rows["db: listener growth (x)"] == ("1.60", "NOT met")
    assert rows["burst: s until the last has it"] == ("1.500", "met")
    table = scale.render(results)
    assert "RELAY_USER_CHANNELS=off, published with relay_publish" in table


def test_the_cut_is_read_as_the_longest_silence_of_the_probes_around_it() -> None:
    # Probes every 10 ms; the cut at 100.0; one stray probe at 100.003, then nothing until
    # 101.2, then every 10 ms again.
    arrivals = [99.5 + i * 0.01 for i in range(50)] + [100.003] + [
        101.2 + i * 0.01 for i in range(20)]
    gap = scale.outage([(t - 0.001, t) for t in arrivals], 100.0)
    assert gap is not None
    assert gap["endsAfterCutSeconds"] == pytest.approx(1.2)
    assert gap["seconds"] == pytest.approx(1.197)


def test_a_cut_that_interrupts_nothing_is_not_charged_a_later_silence() -> None:
    # Probes every 10 ms through the cut at 100.0 (the durable history catches up at once);
    # 120 s later the loaded machine holds them 0.16 s once: that is not the cut's.
    arrivals = [99.5 + i * 0.01 for i in range(12160)] + [221.26 + i * 0.01 for i in range(20)]
    gap = scale.outage([(t - 0.001, t) for t in arrivals], 100.0)
    assert gap is not None
    assert gap["seconds"] == pytest.approx(0.01)
    assert gap["endsAfterCutSeconds"] < 0.02


def test_each_load_generator_spreads_its_clients_over_addresses_of_its_own() -> None:
    first = loopback_sources("127.0.0.10", 8)
    second = loopback_sources("127.0.0.11", 8)
    assert first[:3] == ["127.0.0.10", "127.0.1.10", "127.0.2.10"]
    assert len(set(first)) == 8 and not set(first) & set(second)
    assert loopback_sources("10.0.0.5", 8) == ["10.0.0.5"]  # not loopback: as given


def test_the_storm_says_which_side_ran_out_of_cpu() -> None:
    totals = {"wallSeconds": 100.0, "cpuSeconds": {
        "worker": 80.0, "listener": 20.0, "master": 0.5, "postgres": 10.0,
        "loadgen0": 15.0, "loadgen1": 15.0}}
    budget = stormwatch.who_ran_out(totals, 40_000, 2)
    assert budget["relayCpuMsPerHandshake"] == pytest.approx(2.5125, abs=0.001)
    assert budget["relayCoresFor1500PerSecond"] == pytest.approx(3.77, abs=0.01)
    assert budget["relayCoresUsed"] == pytest.approx(1.0, abs=0.01)
    assert budget["loadgenCoresUsed"] == 0.3 and budget["postgresCoresUsed"] == 0.1
    assert budget["loadgenCpuMsPerHandshake"] == pytest.approx(0.75)
    assert stormwatch.who_ran_out(totals, 0, 2)["relayCpuMsPerHandshake"] is None


def test_relay_counters_are_read_from_its_metrics_text() -> None:
    text = "\n".join([
        "# HELP relay_websocket_upgrades_total WebSocket handshakes answered 101",
        "relay_websocket_upgrades_total 39709.0",
        "relay_websocket_connected_total 39398.0",
        'relay_closes_total{code="1013"} 310.0',
        'relay_auth_failures_total{reason="evicted while pending"} 4.0',
        'relay_commit_to_listener_seconds_bucket{le="0.001"} 3069.0',
        "relay_commit_to_listener_seconds_count 35082.0"])
    counters = stormwatch.parse_counters(text)
    assert counters == {"relay_websocket_upgrades": 39709.0,
                        "relay_websocket_connected": 39398.0,
                        "relay_closes": {"1013": 310.0},
                        "relay_auth_failures": {"evicted while pending": 4.0}}


def test_the_steady_stage_from_relays_histogram_is_the_phases_own() -> None:
    from bench.scenarios import _bucket_quantiles

    inf = float("inf")
    before = [(0.001, 10.0), (0.025, 20.0), (0.5, 20.0), (inf, 20.0)]
    # During the phase: 90 more under 1 ms, 8 more under 25 ms, 2 more over 500 ms.
    after = [(0.001, 100.0), (0.025, 118.0), (0.5, 118.0), (inf, 120.0)]
    assert _bucket_quantiles(before, after) == {
        "p50": 1.0, "p99": None, "count": 100, "overLastBound": 2}
    assert _bucket_quantiles(None, [(0.001, 0.0), (inf, 0.0)]) is None  # nothing observed


def test_the_steady_sweep_goes_down_from_the_asked_rate_and_reports_the_largest_met() -> None:
    assert scale._sweep(None, 10_000) == (5_000, 3_000, 2_000, 1_000, 500)
    assert scale._sweep("1000,4000,0", 10_000) == (4_000, 1_000)
    results = {"config": {"rate": 10_000}, "phases": {
        "steady": {"latencyMs": {"p99": 2_000.0}, "cpuPerMessageUs": {"listener": 60.0,
                                                                       "workers": 100.0}},
        "steadySweep": {"perTx": 5, "largestRateMet": 1_000.0, "steps": [
            {"rate": 2_000.0, "committedPerSecond": 1_999.0,
             "latencyMs": {"p50": 13.0, "p99": 68.8}},
            {"rate": 1_000.0, "committedPerSecond": 1_000.0,
             "latencyMs": {"p50": 3.2, "p99": 18.1}}]}}}
    table = {label: (value, target, verdict) for label, value, target, verdict
             in scale.rows(results)}
    assert table["steady sweep 2,000/s asked: committed/s, p50 / p99 ms"][0] == "1,999, 13.0 / 68.8"
    assert table["steady: largest rate with p99 <= 25 ms (5 per transaction)"] == (
        "1,000", "10,000", "NOT met")
    # Why: every side's CPU per message at the rate reached, times the rate asked.
    assert table["steady: cores all sides need for 10,000/s at that cost"][0] == "1.60"
    assert scale._meets({"latencyMs": {"p99": 25.0}})
    assert not scale._meets({"latencyMs": {"p99": 25.1}}) and not scale._meets({})
