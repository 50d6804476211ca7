"""Scale-out: two relay instances on one PostgreSQL, each with its own single connection."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import RelayProcess, database_connections, notify


def test_two_instances_each_deliver_and_hold_one_connection(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    first = relay_factory()
    second = relay_factory()
    assert first.port != second.port and first.socket_path != second.socket_path
    on_first = first.connect("scaled")
    on_second = second.connect("scaled")
    assert database_connections(postgres_url) == 2
    for i in range(3):
        notify(postgres_url, "user_Subscription_scaled", f'{{"i": {i}}}')
    assert [on_first.expect("update")["data"]["i"] for _ in range(3)] == [0, 1, 2]
    assert [on_second.expect("update")["data"]["i"] for _ in range(3)] == [0, 1, 2]
    # Each instance counts only its own clients.
    assert first.health()[1]["totalConnections"] == 1
    assert second.health()[1]["totalConnections"] == 1
    on_first.close()
    on_second.close()
