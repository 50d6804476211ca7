"""Scale-out: two relay instances (separate gunicorn masters, listeners and ports, as two Fly
machines would be) on one PostgreSQL. Each holds exactly one database connection, and a
user connected to either, or to both, receives every update of theirs and nothing else."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import RelayProcess, database_connections, execute, wait_for


def _write_usage(url: str, user: str, amount: int) -> None:
    execute(url, "INSERT INTO usage (user_id, metric, amount) VALUES (%s, 'scale', %s)",
            (user, amount))


def test_two_instances_each_hold_one_connection_and_deliver_every_update(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    first = relay_factory()
    second = relay_factory()
    assert first.port != second.port and first.socket_path != second.socket_path
    assert set(first.listener_pids()).isdisjoint(second.listener_pids())
    both_first = first.connect("scaled")   # one user, a tab on each machine
    both_second = second.connect("scaled")
    only_second = second.connect("other")  # another user, on one machine
    wait_for(lambda: database_connections(postgres_url) == 2, 10, 0.1,
             "exactly two relay-listener connections in pg_stat_activity")

    for amount in range(1, 6):  # through the real trigger, one transaction each
        _write_usage(postgres_url, "scaled", amount)
    _write_usage(postgres_url, "other", 99)
    for client in (both_first, both_second):
        updates = [client.expect("update") for _ in range(5)]
        assert [u["data"]["row"]["amount"] for u in updates] == [1, 2, 3, 4, 5]
        assert [u["seq"] for u in updates] == [1, 2, 3, 4, 5]  # each instance numbers its own
        assert {u["channel"] for u in updates} == {"user_Usage_scaled"}
    assert only_second.expect("update")["data"]["row"]["amount"] == 99
    assert both_first.nothing_within(0.3)  # "other"'s update went nowhere else

    # Each instance reports its own clients only; the database still sees two connections.
    assert first.health()[1]["totalConnections"] == 1
    assert second.health()[1]["totalConnections"] == 2
    assert database_connections(postgres_url) == 2
    for client in (both_first, both_second, only_second):
        client.close()
