"""/metrics: Prometheus text for the whole instance (all workers + listener), optional auth,
and no secret in /health or /metrics."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.support import SECRET, RelayProcess, execute, wait_for


def _scrape(relay: RelayProcess, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(relay.http_url + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


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

    def scraped() -> dict | None:
        status, text = _scrape(relay)
        assert status == 200
        samples = _samples(text)
        ready = samples.get(("relay_deliveries_total", ()), 0) >= 6 and samples.get(
            ("relay_auth_failures_total", (("reason", "malformed token"),)), 0) >= 1
        return samples if ready else None

    samples = wait_for(scraped, 10, 0.2, "worker counters to reach the listener")
    assert samples[("relay_connections", ())] == 6
    assert samples[("relay_users", ())] == 6
    assert samples[("relay_channels_listened", ())] == 12
    assert samples[("relay_notifications_total", ())] >= 6
    assert samples[("relay_closes_total", (("code", "4001"),))] >= 1
    assert samples[("relay_database_up", ())] == 1
    assert samples[("relay_commit_to_listener_seconds_count", ())] >= 6
    for client in clients:
        client.close()


def test_metrics_token_is_required_when_set(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_METRICS_TOKEN": "scrape-me-please"})
    assert _scrape(relay)[0] == 401
    assert _scrape(relay, "wrong")[0] == 401
    assert _scrape(relay, "scrape-me-please")[0] == 200


def test_health_and_metrics_reveal_no_secret(relay_factory: Callable[..., RelayProcess],
                                             postgres_url: str) -> None:
    relay = relay_factory()
    _, metrics = _scrape(relay)
    with urllib.request.urlopen(relay.http_url + "/health", timeout=5) as response:
        health = response.read().decode()
        headers = response.headers
    for text in (metrics, health):
        assert SECRET not in text
        assert postgres_url not in text
        assert not re.search(r"postgres(ql)?://", text)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
