"""Scale-out: two relay instances (separate gunicorn masters, listeners and ports, as two Fly
machines would be) on one PostgreSQL. Each holds exactly one database connection, and a
user connected to either, or to both, receives every update of theirs and nothing else.

The instances use a database of their own on the session's server, so that the count of
``relay-listener`` connections is theirs alone, whatever other tests left behind."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from relay.schema import install_schema
from tests.support import RelayProcess, assert_marker_comes_next, execute, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    name = f"relay_scale_{secrets.token_hex(4)}"
    try:
        execute(postgres_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        pytest.skip("the test role may not CREATE DATABASE")
    try:
        url = make_dsn(postgres_url, dbname=name)
        install_schema(url, examples=True)
        yield url
    finally:
        execute(postgres_url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(name)))


def _listener_connections(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'relay-listener'")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _write_usage(url: str, user: str, amount: int) -> None:
    execute(url, "INSERT INTO usage (user_id, metric, amount) VALUES (%s, 'scale', %s)",
            (user, amount))


def test_two_instances_each_hold_one_connection_and_deliver_every_update(
        relay_factory: Callable[..., RelayProcess], own_database: str) -> None:
    first = relay_factory({"DATABASE_URL": own_database})
    second = relay_factory({"DATABASE_URL": own_database})
    assert first.port != second.port and first.socket_path != second.socket_path
    assert set(first.listener_pids()).isdisjoint(second.listener_pids())
    both_first = first.connect("scaled")   # one user, a tab on each machine
    both_second = second.connect("scaled")
    only_second = second.connect("other")  # another user, on one machine
    wait_for(lambda: _listener_connections(own_database) == 2, 10, 0.1,
             "exactly two relay-listener connections in pg_stat_activity")

    for amount in range(1, 6):  # through the real trigger, one transaction each
        _write_usage(own_database, "scaled", amount)
    _write_usage(own_database, "other", 99)
    for client in (both_first, both_second):
        updates = [client.expect("update") for _ in range(5)]
        assert [u["data"]["row"]["amount"] for u in updates] == [1, 2, 3, 4, 5]
        assert [u["seq"] for u in updates] == [1, 2, 3, 4, 5]  # each instance numbers its own
        assert {u["channel"] for u in updates} == {"user_Usage_scaled"}
    assert only_second.expect("update")["data"]["row"]["amount"] == 99
    assert_marker_comes_next(own_database, both_first)  # "other"'s went nowhere else

    # Each instance reports its own clients only; the database still sees two connections.
    wait_for(lambda: first.health()[1]["totalConnections"] == 1, 10)
    wait_for(lambda: second.health()[1]["totalConnections"] == 2, 10)
    assert _listener_connections(own_database) == 2
    for client in (both_first, both_second, only_second):
        client.close()
    first.stop()
    second.stop()
