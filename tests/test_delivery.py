"""Delivery: each user receives exactly their own channels' updates, across workers."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.support import (
    Client,
    RelayProcess,
    assert_marker_comes_next,
    execute,
    notify,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


def test_update_reaches_only_its_user(relay: RelayProcess, postgres_url: str) -> None:
    alice = relay.connect("alice")
    bob = relay.connect("bob")
    notify(postgres_url, "user_Subscription_alice", json.dumps({"plan": "pro"}))
    notify(postgres_url, "user_Usage_bob", json.dumps({"table": "usage", "amount": 3}))
    got_alice = alice.expect("update")
    got_bob = bob.expect("update")
    assert got_alice["channel"] == "user_Subscription_alice"
    assert got_alice["data"] == {"plan": "pro"}
    assert got_alice["table"] == "subscription"
    assert got_bob["channel"] == "user_Usage_bob"
    assert got_bob["table"] == "usage"
    # Cross-check: neither saw the other's update.
    assert_marker_comes_next(postgres_url, alice, bob)
    alice.close()
    bob.close()


def test_connected_message_names_exactly_the_users_two_channels(relay: RelayProcess) -> None:
    client = relay.connect(42)
    assert client.connected["userId"] == "42"
    assert client.connected["channels"] == ["user_Subscription_42", "user_Usage_42"]
    client.close()


def test_token_in_query_string_is_accepted(relay: RelayProcess) -> None:
    client = relay.connect("q1", via="query")
    assert client.connected["userId"] == "q1"
    client.close()


def test_clients_spread_over_two_workers_all_receive(relay: RelayProcess,
                                                      postgres_url: str) -> None:
    # The kernel spreads accepts over both workers, but not evenly on a busy machine: more
    # clients connect until both workers hold some (each /health names the worker answering).
    clients: list[Client] = []
    pids: set[int] = set()
    while len(pids) < 2 and len(clients) < 60:
        clients += [relay.connect(f"spread{len(clients) + i}") for i in range(6)]
        for _ in range(20):
            status, body = relay.health()
            assert status == 200
            if body["worker"]["connections"]:
                pids.add(body["worker"]["pid"])
    assert len(pids) == 2, f"connections did not reach both workers: {pids}"
    for i in range(len(clients)):
        notify(postgres_url, f"user_Subscription_spread{i}", json.dumps({"n": i}))
    for i, client in enumerate(clients):
        assert client.expect("update")["data"] == {"n": i}
    for client in clients:
        client.close()


def test_mixed_case_user_id_keeps_its_case(relay: RelayProcess, postgres_url: str) -> None:
    upper = relay.connect("AbC")
    lower = relay.connect("abc")
    notify(postgres_url, "user_Subscription_AbC", '{"who": "AbC"}')
    assert upper.expect("update")["data"] == {"who": "AbC"}
    assert_marker_comes_next(postgres_url, lower)  # the lower-case user did not get AbC's
    upper.close()
    lower.close()


def test_seq_increases_by_one_per_channel(relay: RelayProcess, postgres_url: str) -> None:
    client = relay.connect("seq1")
    for i in range(5):
        notify(postgres_url, "user_Subscription_seq1", json.dumps({"i": i}))
    notify(postgres_url, "user_Usage_seq1", "{}")
    updates = [client.expect("update") for _ in range(6)]
    subs = [u["seq"] for u in updates if u["channel"] == "user_Subscription_seq1"]
    usage = [u["seq"] for u in updates if u["channel"] == "user_Usage_seq1"]
    assert subs == [subs[0] + i for i in range(5)]
    assert len(usage) == 1
    assert [u["data"]["i"] for u in updates if "i" in u["data"]] == [0, 1, 2, 3, 4]
    client.close()


def test_non_json_payload_is_delivered_as_a_string(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    # relay_publish takes json: only an app's own pg_notify on the user's channel can send
    # text that is not JSON, which a relay hears with per-user LISTEN.
    relay = relay_factory({"RELAY_USER_CHANNELS": "listen"}, workers=1)
    client = relay.connect("raw")
    notify(postgres_url, "user_Usage_raw", "plain text, not JSON")
    update = client.expect("update")
    assert update["data"] == "plain text, not JSON"
    assert update["table"] == "usage"
    client.close()


def test_trigger_driven_update_reaches_the_owner(relay: RelayProcess, postgres_url: str) -> None:
    owner = relay.connect("trig1")
    other = relay.connect("trig2")
    execute(postgres_url, "INSERT INTO subscription (user_id, plan, status) "
                          "VALUES ('trig1', 'free', 'active')")
    inserted = owner.expect("update")
    execute(postgres_url, "UPDATE subscription SET plan = 'pro' WHERE user_id = 'trig1'")
    update = owner.expect("update")
    assert inserted["data"]["operation"] == "INSERT"
    assert update["table"] == "subscription"
    assert update["data"]["operation"] == "UPDATE"
    assert update["data"]["row"]["plan"] == "pro"
    assert_marker_comes_next(postgres_url, other)
    owner.close()
    other.close()


def test_row_too_large_for_notify_arrives_whole_from_the_outbox(relay: RelayProcess,
                                                               postgres_url: str) -> None:
    client = relay.connect("big0")
    execute(postgres_url, "INSERT INTO subscription (user_id, plan, status, notes) "
                          "VALUES ('big0', 'pro', 'active', repeat('x', 20000))")
    update = client.expect("update")
    assert update["data"]["operation"] == "INSERT"
    assert update["data"]["row"]["notes"] == "x" * 20000
    assert "truncated" not in update["data"]
    client.close()


def test_row_too_large_for_notify_arrives_as_a_reference_without_the_outbox(
        relay_factory: Callable[..., RelayProcess], outbox_off: str) -> None:
    postgres_url = outbox_off
    relay = relay_factory()
    client = relay.connect("big1")
    execute(postgres_url, "INSERT INTO subscription (user_id, plan, status, notes) "
                          "VALUES ('big1', 'pro', 'active', repeat('x', 20000))")
    update = client.expect("update")
    assert update["data"]["truncated"] is True
    assert update["data"]["operation"] == "INSERT"
    assert isinstance(update["data"]["id"], int)
    assert "row" not in update["data"]
    client.close()


def test_two_connections_of_one_user_both_receive(relay: RelayProcess,
                                                  postgres_url: str) -> None:
    first = relay.connect("twice")
    second = relay.connect("twice")
    notify(postgres_url, "user_Usage_twice", '{"x": 1}')
    assert first.expect("update")["data"] == {"x": 1}
    assert second.expect("update")["data"] == {"x": 1}
    first.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] <= 1 or None, 5)
    notify(postgres_url, "user_Usage_twice", '{"x": 2}')
    assert second.expect("update")["data"] == {"x": 2}
    second.close()


def test_unknown_client_message_is_a_policy_violation(relay: RelayProcess) -> None:
    client = relay.connect("policy")
    client.send({"type": "subscribe", "channel": "user_Usage_someone_else"})
    assert client.expect_close()[0] == 1008


def test_not_json_is_a_policy_violation(relay: RelayProcess) -> None:
    client: Client = relay.connect("policy2")
    client.send("this is not json")
    assert client.expect_close()[0] == 1008
