"""The listener resolves the database's host on gevent's resolver, never inside libpq: a slow
DNS server must not freeze the listener (and every worker's attaches and /health with it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
import psycopg2
import psycopg2.extensions
import pytest

from relay.listener.resolve import ResolveError, libpq_address
from tests.support import RelayProcess


class SlowResolver:
    """gevent's resolver, answering after ``delay`` seconds spent cooperatively."""

    def __init__(self, real: Any, delay: float) -> None:
        self.real, self.delay, self.asked = real, delay, []

    def getaddrinfo(self, host: str, *args: Any) -> Any:
        self.asked.append(host)
        gevent.sleep(self.delay)
        return self.real.getaddrinfo(host, *args)


@pytest.fixture
def slow_resolver() -> Iterator[SlowResolver]:
    hub = gevent.get_hub()
    real = hub.resolver
    hub.resolver = SlowResolver(real, 0.5)
    try:
        yield hub.resolver
    finally:
        hub.resolver = real


@pytest.mark.parametrize("dsn", [
    "postgresql://u@127.0.0.1:5432/db",
    "postgresql://u@[::1]:5432/db",
    "host=/tmp port=5432 dbname=db",
    "postgresql://u@localhost/db?hostaddr=127.0.0.1",
    "postgresql://u@a.example,b.example/db",
    "dbname=db",
])
def test_nothing_to_resolve_is_left_to_libpq(dsn: str) -> None:
    assert libpq_address(dsn) == {}


def test_a_name_becomes_host_and_hostaddr_lists() -> None:
    address = libpq_address("postgresql://u:secret@localhost:6543/db")
    addrs = address["hostaddr"].split(",")
    assert "127.0.0.1" in addrs or "::1" in addrs
    assert address["host"].split(",") == ["localhost"] * len(addrs)  # for SNI and TLS checks


def test_an_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ResolveError, match="cannot resolve database host 'relay-test.invalid'"):
        libpq_address("postgresql://u@relay-test.invalid/db")


def test_resolution_runs_on_the_hub_and_others_keep_running(slow_resolver: SlowResolver
                                                            ) -> None:
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.05)

    other = gevent.spawn(ticker)
    try:
        address = gevent.spawn(libpq_address, "postgresql://u@localhost/db").get(timeout=5)
    finally:
        other.kill()
    assert slow_resolver.asked == ["localhost"]
    assert address["hostaddr"]
    assert len(ticks) >= 5  # the other greenlet ran while the name was being resolved


def by_name(url: str, name: str = "localhost") -> str:
    """``url`` with its loopback address written as ``name`` (skips a non-local database)."""
    host = psycopg2.extensions.parse_dsn(url).get("host", "")
    if host not in ("127.0.0.1", "localhost"):
        pytest.skip("needs the embedded (loopback) PostgreSQL")
    return url.replace(host, name, 1)


@pytest.mark.slow
def test_libpq_connects_with_the_resolved_address(postgres_url: str) -> None:
    by_name_url = by_name(postgres_url)
    address = libpq_address(by_name_url)
    conn = psycopg2.connect(by_name_url, **address)
    try:
        assert "hostaddr=" in conn.dsn
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


@pytest.mark.slow
def test_relay_serves_with_a_host_name_in_database_url(postgres_url: str,
                                                        schema_installed: list[str],
                                                        tmp_path: Any) -> None:
    with RelayProcess(by_name(postgres_url), tmp_path, workers=1) as relay:
        status, body = relay.health()
        assert status == 200 and body["listener"]["database"] == "connected"
        client = relay.connect("resolve-1")
        client.close()


@pytest.mark.slow
def test_relay_reports_an_unresolvable_database_host(postgres_url: str,
                                                     schema_installed: list[str],
                                                     tmp_path: Any) -> None:
    bad = by_name(postgres_url, "relay-test.invalid")
    relay = RelayProcess(bad, tmp_path, workers=1).start(wait=False)
    try:
        deadline = time.monotonic() + 20
        while "cannot resolve database host 'relay-test.invalid'" not in relay.logs():
            assert time.monotonic() < deadline, relay.logs()[-2000:]
            time.sleep(0.2)
        assert relay.health()[0] == 503
    finally:
        relay.stop()
