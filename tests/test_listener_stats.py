"""Unit tests of the listener's instance figures: the commit→listener latency histogram and
the workers' counters summed so that they never go backwards."""

from __future__ import annotations

from relay.listener.stats import LATENCY_BUCKETS, LatencyHistogram, WorkerTotals
from relay.protocol import encode_update_stamped


def test_latency_is_read_from_the_payloads_ts_and_reported_cumulative() -> None:
    histogram = LatencyHistogram(clock=lambda: 10000.0)
    for payload in ('{"row": {"id": 1}, "ts": 9999.998}',  # 2 ms
                    '{"ts":9999.5}',  # 500 ms
                    '{"row": 1}',  # no ts: not observed
                    '{"row": {"ts": 9999.9}}',  # a row's column, not the commit time
                    '{"ts": "soon"}',  # not a number
                    '{"ts": true}',  # nor is a boolean
                    '{"ts": 1.0}',  # over an hour: a clock problem, not a latency
                    '{"ts": 1' + "0" * 400 + '}',  # past a float (the standard library's parse)
                    '[1, 2]'):
        histogram.observe(encode_update_stamped("user_Usage_1", payload, "s", 1)[1])
    snapshot = histogram.snapshot()
    buckets = dict(snapshot["buckets"])
    assert snapshot["count"] == 2 and abs(snapshot["sum"] - 0.502) < 1e-6
    assert (buckets[0.001], buckets[0.0025], buckets[0.25], buckets[0.5]) == (0, 1, 1, 2)
    assert buckets[float("inf")] == 2 and len(buckets) == len(LATENCY_BUCKETS)


def test_a_commit_time_ahead_of_the_listeners_clock_counts_as_no_latency() -> None:
    histogram = LatencyHistogram(clock=lambda: 10000.0)
    histogram.observe(10000.5)  # the database's clock half a second ahead
    histogram.observe(9999)  # an integer number of seconds
    snapshot = histogram.snapshot()
    assert snapshot["count"] == 2 and snapshot["sum"] == 1.0
    assert dict(snapshot["buckets"])[0.001] == 1


def test_worker_totals_keep_a_gone_workers_counters() -> None:
    totals = WorkerTotals()
    first = {"counters": {"delivered": 5}, "closes": {"4009": 1}, "authFailures": {}}
    second = {"counters": {"delivered": 2, "bogus": "x"}, "closes": {}, "authFailures": {}}
    assert totals.sum([first, second])["counters"] == {"delivered": 7}
    totals.retire(first)
    summed = totals.sum([second])
    assert summed["counters"] == {"delivered": 7} and summed["closes"] == {"4009": 1}
    assert set(summed) == {"counters", "closes", "authFailures"}


def test_the_queue_gauge_warns_once_above_half_and_clears_under_40_percent() -> None:
    from relay.listener.stats import QueueGauge

    gauge = QueueGauge()
    samples = [0.0, 0.3, 0.5, 0.7, 0.45, 0.6, 0.39, 0.2, 0.55]
    assert [gauge.observe(s) for s in samples] == [
        None, None, "warn", None, None, None, "clear", None, "warn"]
    assert gauge.usage == 0.55
