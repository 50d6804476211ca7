"""Resume: a reconnecting client gets exactly what it missed, in order, once — or resync."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.support import RelayProcess, notify, wait_for


def _cursors(messages: list[dict], start: dict[str, str]) -> dict[str, str]:
    cursors = dict(start)
    for message in messages:
        if message["type"] == "update":
            cursors[message["channel"]] = message["cursor"]
    return cursors


def test_reconnect_with_cursor_replays_exactly_the_missed_updates(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    keeper = relay.connect("res1")  # keeps the channels listened while the other reconnects
    client = relay.connect("res1")
    for i in range(3):
        notify(postgres_url, "user_Subscription_res1", f'{{"i": {i}}}')
    seen = [client.expect("update") for _ in range(3)]
    cursors = _cursors(seen, client.connected["cursors"])
    client.close()
    for i in range(3, 8):
        notify(postgres_url, "user_Subscription_res1", f'{{"i": {i}}}')
    notify(postgres_url, "user_Usage_res1", '{"u": 1}')
    for _ in range(6):
        keeper.expect("update")  # all of them have been dispatched
    back = relay.connect("res1", resume=cursors)
    assert back.connected["resumed"] is True
    replayed = [back.expect("update") for _ in range(6)]
    subs = [m for m in replayed if m["channel"] == "user_Subscription_res1"]
    assert [m["data"]["i"] for m in subs] == [3, 4, 5, 6, 7]
    assert [m["seq"] for m in subs] == [4, 5, 6, 7, 8]
    assert [m["data"] for m in replayed if m["channel"] == "user_Usage_res1"] == [{"u": 1}]
    notify(postgres_url, "user_Subscription_res1", '{"i": 8}')
    live = back.expect("update")
    assert live["data"] == {"i": 8} and live["seq"] == 9  # no duplicate, no gap
    assert back.nothing_within(0.3)
    for c in (keeper, back):
        c.close()


def test_quick_reconnect_within_the_linger_resumes_without_loss(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_LINGER_SECONDS": "30"})
    client = relay.connect("linger1")
    notify(postgres_url, "user_Usage_linger1", '{"n": 1}')
    cursors = _cursors([client.expect("update")], client.connected["cursors"])
    client.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] == 0, 5)
    notify(postgres_url, "user_Usage_linger1", '{"n": 2}')  # while nobody is connected
    wait_for(lambda: relay.health()[1]["listener"]["channels"] == 2, 2)
    back = relay.connect("linger1", resume=cursors)
    assert back.connected["resumed"] is True
    assert back.expect("update")["data"] == {"n": 2}
    back.close()


def test_unknown_stream_gets_resync(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    client = relay.connect("res2", resume={"user_Subscription_res2": "gone-1:5"})
    assert client.connected["resumed"] is False
    resync = client.expect("resync")
    assert resync["channels"] == ["user_Subscription_res2"]
    assert resync["cursors"]["user_Subscription_res2"].endswith(":0")
    client.close()


def test_evicted_history_gets_resync(relay_factory: Callable[..., RelayProcess],
                                     postgres_url: str) -> None:
    relay = relay_factory({"RELAY_HISTORY_SIZE": "2"})
    keeper = relay.connect("res3")
    start = keeper.connected["cursors"]
    for i in range(5):
        notify(postgres_url, "user_Usage_res3", f'{{"i": {i}}}')
    for _ in range(5):
        keeper.expect("update")
    back = relay.connect("res3", resume={"user_Usage_res3": start["user_Usage_res3"]})
    resync = back.expect("resync")
    assert resync["channels"] == ["user_Usage_res3"]
    assert not [m for m in back.received if m["type"] == "update"]
    # A cursor still inside the history replays.
    again = relay.connect("res3", resume={"user_Usage_res3": start["user_Usage_res3"][:-1] + "3"})
    assert [again.expect("update")["data"]["i"] for _ in range(2)] == [3, 4]
    for c in (keeper, back, again):
        c.close()


def test_too_old_history_gets_resync(relay_factory: Callable[..., RelayProcess],
                                     postgres_url: str) -> None:
    relay = relay_factory({"RELAY_HISTORY_TTL": "0.5"})
    keeper = relay.connect("res4")
    start = keeper.connected["cursors"]
    notify(postgres_url, "user_Usage_res4", "{}")
    keeper.expect("update")
    time.sleep(1.0)
    back = relay.connect("res4", resume={"user_Usage_res4": start["user_Usage_res4"]})
    assert back.expect("resync")["channels"] == ["user_Usage_res4"]
    keeper.close()
    back.close()
