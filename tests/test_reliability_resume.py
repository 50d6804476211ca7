"""Resume: a reconnecting client gets exactly what it missed, in order, once — or resync."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.streams import MessageReader, NotifyWriter, check_no_silent_gap, running
from tests.support import RelayProcess, assert_marker_comes_next, execute, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


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
    assert_marker_comes_next(postgres_url, back)
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
    assert resync["cursors"]["user_Subscription_res2"].split(":")[1] == "0"  # seq 0
    client.close()


def test_evicted_history_gets_resync(relay_factory: Callable[..., RelayProcess],
                                     postgres_url: str, outbox_off: str) -> None:
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
                                     postgres_url: str, outbox_off: str) -> None:
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


def test_seq_increases_by_one_per_channel_in_commit_order_on_every_worker(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    # Four connections of one user: with two workers, both are (almost surely) involved, and
    # every connection must see the same stream.
    clients = [relay.connect("order1") for _ in range(4)]
    execute(postgres_url, "SELECT relay_publish(CASE WHEN mod(g, 3) = 0 THEN 'user_Usage_order1' "
                          "ELSE 'user_Subscription_order1' END, json_build_object('g', g))"
                          " FROM generate_series(1, 60) AS g")  # one transaction
    for g in range(61, 81):  # and one transaction each
        notify(postgres_url, "user_Subscription_order1", json.dumps({"g": g}))
    expected_subs = [g for g in range(1, 81) if g > 60 or g % 3]
    expected_usage = [g for g in range(1, 61) if g % 3 == 0]
    streams = []
    for client in clients:
        updates = [client.expect("update") for _ in range(80)]
        by_channel: dict[str, list[dict]] = {}
        for update in updates:
            by_channel.setdefault(update["channel"], []).append(update)
        subs, usage = by_channel["user_Subscription_order1"], by_channel["user_Usage_order1"]
        assert [m["data"]["g"] for m in subs] == expected_subs
        assert [m["data"]["g"] for m in usage] == expected_usage
        assert [m["seq"] for m in subs] == list(range(1, len(subs) + 1))
        assert [m["seq"] for m in usage] == list(range(1, len(usage) + 1))
        streams.append([m["cursor"] for m in updates])
    assert_marker_comes_next(postgres_url, *clients)  # and nothing more, to any of them
    assert all(s == streams[0] for s in streams)  # the same cursors on every worker
    for client in clients:
        client.close()


def test_resume_after_a_worker_restart_replays_exactly_what_was_missed(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_DRAIN_SECONDS": "0"}, workers=1)
    client = relay.connect("wr1")
    notify(postgres_url, "user_Usage_wr1", '{"n": 1}')
    cursors = _cursors([client.expect("update")], client.connected["cursors"])
    (worker,) = relay.worker_pids()
    os.kill(worker, signal.SIGTERM)  # gunicorn replaces it; the listener keeps the channel
    assert client.expect_close()[0] == 1012
    for n in (2, 3, 4):  # while the client is away
        notify(postgres_url, "user_Usage_wr1", json.dumps({"n": n}))
    wait_for(lambda: relay.worker_pids() not in ([], [worker]), 20,
             message="the replacement worker")
    relay.wait_healthy()
    back = relay.connect("wr1", resume=cursors)
    assert back.connected["resumed"] is True
    assert [back.expect("update")["data"]["n"] for _ in range(3)] == [2, 3, 4]
    notify(postgres_url, "user_Usage_wr1", '{"n": 5}')
    live = back.expect("update")
    assert live["data"] == {"n": 5} and live["seq"] == 5
    back.close()


def test_cursor_from_before_a_listener_restart_gets_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    relay = relay_factory()
    client = relay.connect("ep1")
    notify(postgres_url, "user_Usage_ep1", "{}")
    cursors = _cursors([client.expect("update")], client.connected["cursors"])
    client.close()
    epoch = relay.health()[1]["listener"]["epoch"]
    (listener,) = relay.listener_pids()
    os.kill(listener, signal.SIGKILL)
    wait_for(lambda: relay.health()[1].get("listener", {}).get("epoch") not in (None, epoch),
             10, message="a new listener")
    back = relay.connect("ep1", resume=cursors)
    assert back.connected["resumed"] is False
    resync = back.expect("resync")
    assert set(resync["channels"]) == set(cursors)
    assert all(c.endswith(":0") for c in resync["cursors"].values())
    notify(postgres_url, "user_Usage_ep1", '{"after": 1}')
    assert back.expect("update")["cursor"] == resync["cursors"]["user_Usage_ep1"][:-1] + "1"
    back.close()


def test_resume_bigger_than_the_outbound_queue_is_a_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """Replaying more than half the client's queue would close it 4009, and the same
    resume would overflow again: the client is told to resync instead."""
    relay = relay_factory({"RELAY_QUEUE_MAX_MESSAGES": "20", "RELAY_HISTORY_SIZE": "100"})
    keeper = relay.connect("big1")
    start = keeper.connected["cursors"]
    execute(postgres_url, "SELECT relay_publish('user_Usage_big1', json_build_object('i', i))"
                          " FROM generate_series(1, 30) AS i")
    seen = [keeper.expect("update") for _ in range(30)]
    far = relay.connect("big1", resume={"user_Usage_big1": start["user_Usage_big1"]})
    resync = far.expect("resync")
    assert resync["reason"] == "too far behind" and resync["channels"] == ["user_Usage_big1"]
    assert resync["cursors"]["user_Usage_big1"].split(":")[1] == "30"  # seq 30
    near = relay.connect("big1", resume={"user_Usage_big1": seen[24]["cursor"]})
    assert [near.expect("update")["data"]["i"] for _ in range(5)] == [26, 27, 28, 29, 30]
    for client in (keeper, far, near):
        assert client.close_code is None
        client.close()


def _more_updates(writer: NotifyWriter, count: int = 40) -> None:
    target = len(writer.committed) + count
    wait_for(lambda: len(writer.committed) >= target, 10, message="more updates")


def test_reconnects_with_cursors_under_steady_writes_lose_nothing(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    """A client that drops and comes back with its cursors five times while updates flow
    gets every one of them, in order, once, with no resync (replay and live meet exactly)."""
    channel = "user_Usage_rc1"
    relay = relay_factory()
    keeper = relay.connect("rc1")  # another tab of the user; also keeps the channel
    reader = MessageReader(relay.connect("rc1"))
    writer = NotifyWriter(postgres_url, channel, interval=0.003)
    with running(writer, reader):
        for _ in range(5):
            _more_updates(writer)
            with reader.paused():
                reader.client.close()
                back = relay.connect("rc1", resume=reader.cursors())
                assert back.connected["resumed"] is True
                reader.swap(back)
        _more_updates(writer)
    counts = check_no_silent_gap(reader.received, channel, writer)
    assert counts == {"delivered": len(writer.committed), "excused": 0, "resyncs": 0}
    reader.client.close()
    keeper.close()
