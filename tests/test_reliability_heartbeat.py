"""Heartbeats, beyond the 4011 test in test_reliability_connection.py: the silent client's
close is counted and it resumes without loss; the server pings at the interval it announced,
so a client can tell a silent server by the missing pings."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

HEARTBEAT = {"RELAY_PING_INTERVAL": "0.5", "RELAY_PONG_TIMEOUT": "1"}


def _metrics(relay: RelayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(relay.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_silent_client_is_closed_4011_counted_and_resumes_without_loss(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory(HEARTBEAT)
    silent = relay.connect("hb-silent", answer_pings=False)
    alive = relay.connect("hb-alive")
    notify(postgres_url, "user_Usage_hb-silent", '{"n": 1}')
    deadline = time.monotonic() + 10
    while silent.close_code is None and time.monotonic() < deadline:
        silent.poll(0.1)  # pings never answered
        alive.poll(0.1)  # reading answers them
    assert (silent.close_code, silent.close_reason) == (4011, "no pong in time")
    # The client that answers was never disturbed. Checked now: this client answers pings
    # only while it reads, and below the test waits seconds without reading it.
    notify(postgres_url, "user_Usage_hb-alive", '{"alive": 1}')
    assert alive.expect("update")["data"] == {"alive": 1}
    assert alive.close_code is None
    alive.close()
    (update,) = [m for m in silent.received if m["type"] == "update"]
    cursor = update["cursor"]
    notify(postgres_url, "user_Usage_hb-silent", '{"n": 2}')  # sent while it is away
    # Counted over the instance (workers report to the listener about once a second).
    metrics = wait_for(lambda: (m := _metrics(relay))[("relay_heartbeat_timeouts_total", ())]
                       and m, 10, message="the heartbeat timeout to be counted")
    assert metrics[("relay_heartbeat_timeouts_total", ())] == 1
    assert metrics[("relay_closes_total", (("code", "4011"),))] == 1
    # 4011 means "reconnect and resume": the client gets exactly what it missed.
    back = relay.connect("hb-silent", resume={"user_Usage_hb-silent": cursor})
    assert back.connected["resumed"] is True
    assert back.expect("update")["data"] == {"n": 2}
    back.close()


def test_server_pings_at_the_interval_it_announces(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory(HEARTBEAT)
    client = relay.connect("hb-count", answer_pings=False)
    assert client.connected["pingInterval"] == 0.5
    pings = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        message = client.recv()
        assert message is not None and message["type"] == "ping", message
        client.send({"type": "pong"})  # answered by hand, so that each one is counted
        pings += 1
    # Loosely (the housekeeping tick is coarse): about 5 in 2.5 s, never a silence of 2.5
    # intervals that a client's watchdog would take for a dead server.
    assert pings >= 3
    assert client.close_code is None
    client.close()

