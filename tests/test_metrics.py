"""/metrics: Prometheus text for the whole instance (all workers + the listener), counters
that survive a worker's exit, optional bearer token; and neither /health nor /metrics
reveals a secret, while every HTTP answer carries the security headers."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message

import psutil
import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families
from psycopg2.extensions import make_dsn

from tests.support import ROOT, SECRET, Client, RelayProcess, execute, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Message]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def _scrape(relay: RelayProcess, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body, _ = _get(relay.http_url + "/metrics", headers)
    return status, body


def _samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _documented_metrics() -> set[str]:
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("## /metrics", 1)[1].split("\n## ", 1)[0]
    # The parser names a counter's family without its _total suffix.
    return {name.removesuffix("_total") for name in re.findall(r"`(relay_[a-z_]+)", section)}


def test_metrics_aggregate_all_workers_and_the_listener(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    clients = [relay.connect(f"m{i}") for i in range(6)]
    refused = relay.connect(token="garbage", expect_connected=False)
    assert refused.expect_close()[0] == 4001
    for i in range(6):
        execute(postgres_url, "INSERT INTO usage (user_id, metric, amount) VALUES (%s, 'x', 1)",
                (f"m{i}",))
    for client in clients:
        assert client.expect("update")["table"] == "usage"

    def scraped() -> Samples | None:
        status, text = _scrape(relay)
        assert status == 200
        samples = _samples(text)
        ready = samples.get(("relay_deliveries_total", ()), 0) >= 6 and samples.get(
            ("relay_auth_failures_total", (("reason", "malformed token"),)), 0) >= 1
        return samples if ready else None

    samples = wait_for(scraped, 10, 0.2, "worker counters to reach the listener")
    assert samples[("relay_listener_up", ())] == 1
    assert samples[("relay_database_up", ())] == 1
    assert samples[("relay_workers", ())] == 2
    assert samples[("relay_connections", ())] == 6
    assert samples[("relay_users", ())] == 6
    assert samples[("relay_channels", ())] == 12
    assert samples[("relay_channels_listened", ())] == 1  # relay's shared channel alone
    assert samples[("relay_user_channels_listen", ())] == 0
    assert samples[("relay_notify_queue_usage", ())] == 0.0
    assert samples[("relay_notifications_total", ())] >= 6
    assert samples[("relay_closes_total", (("code", "4001"),))] >= 1
    # Seven upgraded (the refused token too), six of them connected.
    assert samples[("relay_websocket_upgrades_total", ())] == 7
    assert samples[("relay_websocket_connected_total", ())] == 6
    # The trigger's "ts": every notification observed, each well under a minute.
    assert samples[("relay_commit_to_listener_seconds_count", ())] >= 6
    assert samples[("relay_commit_to_listener_seconds_bucket", (("le", "+Inf"),))] >= 6
    assert samples[("relay_commit_to_listener_seconds_sum", ())] < 60
    # Every metric the operations guide lists is exposed, and none it does not list (but the
    # one exposed only while the listener is unreachable).
    _, text = _scrape(relay)
    exposed = {family.name for family in text_string_to_metric_families(text)}
    assert exposed == _documented_metrics() - {"relay_worker_connections"}
    for client in clients:
        client.close()


def _worker_holding(relay: RelayProcess, client: Client) -> int:
    port = client.ws.sock.getsockname()[1]
    for pid in relay.worker_pids():
        if any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections()):
            return pid
    raise AssertionError("no worker holds the client's connection")


def _close_code(client: Client, timeout: float) -> int | None:
    try:
        message = client.recv(timeout)
    except websocket.WebSocketTimeoutException:
        return None
    return client.close_code if message is None else None


def test_counters_survive_a_worker_exit(relay_factory: Callable[..., RelayProcess],
                                        postgres_url: str) -> None:
    relay = relay_factory()
    clients = [relay.connect(f"w{i}") for i in range(4)]
    for i in range(4):
        execute(postgres_url, "INSERT INTO usage (user_id, metric, amount) VALUES (%s, 'x', 1)",
                (f"w{i}",))
    for client in clients:
        client.expect("update")
    before = wait_for(lambda: (s := _samples(_scrape(relay)[1])).get(
        ("relay_deliveries_total", ()), 0) >= 4 and s, 10, 0.2, "deliveries counted")
    # Stop the worker holding the first client (gunicorn starts another); its clients are
    # closed with 1012 and its counters leave with it, except that the listener keeps them.
    victim = _worker_holding(relay, clients[0])
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: victim not in relay.worker_pids() and len(relay.worker_pids()) == 2, 20,
             0.1, "the worker to be replaced")
    relay.wait_healthy()
    closed = [_close_code(client, 0.5) for client in clients]
    assert closed[0] == 1012 and set(closed) <= {1012, None}
    after = wait_for(lambda: (s := _samples(_scrape(relay)[1])).get(
        ("relay_closes_total", (("code", "1012"),)), 0) >= closed.count(1012) and s, 10, 0.2,
        "the exited worker's closes to be counted")
    assert after[("relay_deliveries_total", ())] >= before[("relay_deliveries_total", ())]
    assert after[("relay_connections", ())] == closed.count(None)
    for client in clients:
        client.close()


def test_metrics_token_is_required_when_set(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_METRICS_TOKEN": "scrape-me-please"})
    status, body = _scrape(relay)
    assert status == 401 and "relay_" not in body
    assert _scrape(relay, "wrong")[0] == 401
    status, body = _scrape(relay, "scrape-me-please")
    assert status == 200 and "relay_connections" in body
    assert _get(relay.http_url + "/health")[0] == 200  # the health check needs no token


def test_metrics_with_a_non_ascii_authorization_header_is_401_not_500(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_METRICS_TOKEN": "scrape-me-please"})
    for value in (b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer scrape-me-please\xff", b"\xe2\x82\xac"):
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
        connection.putrequest("GET", "/metrics")
        connection.putheader("Authorization", value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 401, (value, response.status, body[:200])
        assert b"relay_" not in body
    assert "Traceback" not in relay.logs()
    assert _scrape(relay, "scrape-me-please")[0] == 200


def test_health_and_metrics_reveal_no_secret_and_carry_security_headers(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    password = "dsn-password-must-not-leak"  # the test server trusts local connections
    relay = relay_factory({"DATABASE_URL": make_dsn(postgres_url, password=password),
                           "RELAY_METRICS_TOKEN": "metrics-token-must-not-leak"})
    relay.connect("headers").close()
    origin = {"Origin": "https://evil.example.com"}
    answers = {
        "/health": _get(relay.http_url + "/health", origin),
        "/metrics": _get(relay.http_url + "/metrics",
                         {**origin, "Authorization": "Bearer metrics-token-must-not-leak"}),
        "/metrics unauthorized": _get(relay.http_url + "/metrics", origin),
        "/nowhere": _get(relay.http_url + "/nowhere", origin),
    }
    assert [status for status, _, _ in answers.values()] == [200, 200, 401, 404]
    for name, (_, body, headers) in answers.items():
        for secret in (SECRET, password, "metrics-token-must-not-leak", postgres_url):
            assert secret not in body, f"{name} reveals a secret"
        assert not re.search(r"postgres(ql)?://|password|dbname=", body), name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert headers["Cache-Control"] == "no-store", name
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], name
        # No CORS: another origin's page cannot read /health or /metrics.
        assert "Access-Control-Allow-Origin" not in headers, name
    relay.stop()
    assert password not in relay.logs() and SECRET not in relay.logs()


def test_commit_to_listener_latency_lands_in_its_bucket(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Payloads whose ``ts`` lies 0.3 s and 1.7 s in the past, and one without ``ts``: the
    histogram counts two, each in its own bucket and every bucket above it (cumulative)."""
    relay = relay_factory(workers=1)
    client = relay.connect("latency-1")
    for ts_ago, n in ((0.3, 1), (1.7, 2), (None, 3)):
        body = {"n": n} if ts_ago is None else {"n": n, "ts": time.time() - ts_ago}
        notify(postgres_url, "user_Usage_latency-1", json.dumps(body))
        assert client.expect("update")["data"]["n"] == n
    # The listener's figures reach the workers' /metrics once a second.
    samples = wait_for(lambda: (s := _samples(_scrape(relay)[1])).get(
        ("relay_commit_to_listener_seconds_count", ())) == 2 and s, 10)

    def bucket(le: str) -> float:
        return samples[("relay_commit_to_listener_seconds_bucket", (("le", le),))]

    assert samples[("relay_commit_to_listener_seconds_count", ())] == 2
    assert bucket("0.25") == 0  # 0.3 s (and a little more) is over this bound
    assert bucket("0.5") == 1
    assert bucket("1.0") == 1
    assert bucket("2.5") == 2
    assert bucket("+Inf") == 2
    assert 2.0 <= samples[("relay_commit_to_listener_seconds_sum", ())] < 2.5
    client.close()
