"""/health and /metrics answer from the figures the listener pushes to every worker once a
second (issue 14, item 7): a flood of requests costs the listener nothing per request, and
the answer stays what the instance is."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from relay.listener.server import STATS_PUSH_SECONDS
from tests.support import RelayProcess, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

REQUESTS_PER_THREAD = 100


def test_a_flood_of_health_and_metrics_costs_the_listener_nothing_per_request(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    client = relay.connect("flooded")
    wait_for(lambda: relay.health()[1].get("totalConnections") == 1, 10)
    built = relay.health()[1]["listener"]["statsBuilt"]
    statuses: Counter[int] = Counter()

    def hammer(path: str) -> None:
        for _ in range(REQUESTS_PER_THREAD):
            with urllib.request.urlopen(relay.http_url + path, timeout=10) as response:
                response.read()
                statuses[response.status] += 1

    threads = [threading.Thread(target=hammer, args=(path,))
               for path in ("/health", "/metrics", "/health", "/metrics")]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started
    status, body = relay.health()
    grew = body["listener"]["statsBuilt"] - built

    assert statuses == {200: 4 * REQUESTS_PER_THREAD}
    # The listener built its figures once per push period, however many requests came (it
    # used to build them, summing over every user, for each request).
    assert grew <= elapsed / STATS_PUSH_SECONDS + 3, (grew, f"{elapsed:.1f}s")
    assert status == 200 and body["totalConnections"] == 1 and body["connectedUsers"] == 1
    client.close()
