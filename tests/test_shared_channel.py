"""Routing through relay's one shared channel, and per-user LISTEN beside it, end to end
(PostgreSQL, gunicorn with two workers, the listener, WebSocket clients):

- ``relay_publish`` reaches exactly the channel's subscribers, with channel names of any
  characters PostgreSQL allows (quotes, spaces, unicode, case);
- ``RELAY_USER_CHANNELS``: ``off`` hears the shared channel alone, ``listen`` an app's own
  ``pg_notify`` too, ``auto`` LISTENs per user until relay's SQL is installed, switches when
  ``db install`` announces itself (clients notice nothing), and back when it is removed;
- a channel fed both ways is one stream: each notification is the next ``seq``, in commit
  order, whichever way it came.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from relay.schema import SQL_VERSION, install_schema
from tests.support import (
    Client,
    RelayProcess,
    execute,
    notify_directly,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


def _publish(url: str, channel: str, payload: Any) -> None:
    execute(url, "SELECT relay_publish(%s, %s::json)", (channel, json.dumps(payload)))


def _listener(relay: RelayProcess, **expected: Any) -> dict[str, Any]:
    """The listener's section of /health once it shows ``expected`` (the figures are pushed
    to the workers every second)."""
    def matches() -> dict[str, Any] | None:
        status, body = relay.health()
        listener = body.get("listener", {})
        ok = status == 200 and all(listener.get(k) == v for k, v in expected.items())
        return listener if ok else None
    return wait_for(matches, 15, 0.05, f"/health to show {expected}")


def _next_update(client: Client) -> dict[str, Any]:
    return client.expect("update")


def test_publish_reaches_exactly_the_channels_subscribers(relay: RelayProcess,
                                                          postgres_url: str) -> None:
    listener = _listener(relay, userChannels="off")  # relay's SQL is installed: auto = off
    assert listener["listened"] == 1 and listener["notifyChannel"] == "relay"
    alice, bob = relay.connect("sh-alice"), relay.connect("sh-bob")
    _publish(postgres_url, "user_Subscription_sh-alice", {"plan": "pro"})
    _publish(postgres_url, "user_Usage_sh-bob", {"n": 1})
    _publish(postgres_url, "user_Usage_sh-alice", {"n": 2})
    got = _next_update(alice)
    assert (got["channel"], got["table"], got["data"], got["seq"]) == (
        "user_Subscription_sh-alice", "subscription", {"plan": "pro"}, 1)
    got = _next_update(alice)
    assert (got["channel"], got["data"]) == ("user_Usage_sh-alice", {"n": 2})
    got = _next_update(bob)  # and nothing of alice's before it
    assert (got["channel"], got["data"]) == ("user_Usage_sh-bob", {"n": 1})
    _listener(relay, listened=1)  # still one channel LISTENed for any number of users
    alice.close()
    bob.close()


def test_an_apps_own_pg_notify_is_not_heard_on_the_shared_channel_alone(
        relay: RelayProcess, postgres_url: str) -> None:
    _listener(relay, userChannels="off")
    client = relay.connect("sh-deaf")
    notify_directly(postgres_url, "user_Usage_sh-deaf", '{"direct": true}')
    _publish(postgres_url, "user_Usage_sh-deaf", {"marker": 1})
    update = _next_update(client)  # the marker, committed after, is the first thing heard
    assert update["data"] == {"marker": 1} and update["seq"] == 1
    client.close()


def test_identical_messages_in_one_transaction_stay_two(relay: RelayProcess,
                                                        postgres_url: str) -> None:
    client = relay.connect("sh-twin")
    execute(postgres_url, "SELECT relay_publish('user_Usage_sh-twin', '{\"same\": 1}'), "
                          "relay_publish('user_Usage_sh-twin', '{\"same\": 1}')")
    assert [_next_update(client)["seq"] for _ in range(2)] == [1, 2]
    client.close()


@pytest.mark.parametrize("mode", ["off", "listen"])
def test_channel_names_with_quotes_spaces_unicode_and_case_route_exactly(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, mode: str) -> None:
    template = "user \"Sub\" 'é' ü_{userId}"  # LISTEN needs the quoted identifier; the frame
    relay = relay_factory({"RELAY_CHANNELS": f"{template},user_Usage_{{userId}}",
                           "RELAY_USER_CHANNELS": mode}, workers=1)
    upper, lower = relay.connect("CaSe"), relay.connect("case")
    channel = template.replace("{userId}", "CaSe")
    assert upper.connected["channels"][0] == channel
    send = _publish if mode == "off" else (
        lambda url, ch, data: notify_directly(url, ch, json.dumps(data)))
    send(postgres_url, channel, {"to": "CaSe"})
    send(postgres_url, template.replace("{userId}", "case"), {"to": "case"})
    assert _next_update(upper)["data"] == {"to": "CaSe"}
    got = _next_update(lower)
    assert (got["channel"], got["data"]) == (template.replace("{userId}", "case"), {"to": "case"})
    upper.close()
    lower.close()


@pytest.mark.parametrize("outbox", ["on", "off"])
def test_a_channel_fed_both_ways_is_one_stream_in_commit_order(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox: str) -> None:
    execute(postgres_url, "SELECT relay.set('outbox', %s)", (outbox,))
    try:
        _fed_both_ways(relay_factory, postgres_url, outbox)
    finally:
        execute(postgres_url, "SELECT relay.set('outbox', 'on')")


def _fed_both_ways(relay_factory: Callable[..., RelayProcess], postgres_url: str,
                   outbox: str) -> None:
    relay = relay_factory({"RELAY_USER_CHANNELS": "listen"}, workers=1)
    _listener(relay, userChannels="listen")
    client = relay.connect("both")
    channel = "user_Usage_both"
    # One transaction: the app's own pg_notify, relay_publish, the app's again; then another
    # transaction through relay_publish. Each is one update, in the order committed. With the
    # outbox on, relay_publish's message is numbered (and NOTIFYed) at COMMIT: after the
    # transaction's own pg_notify calls.
    execute(postgres_url, "SELECT pg_notify(%s, '{\"n\": 1}'), relay_publish(%s, '{\"n\": 2}'), "
                          "pg_notify(%s, '{\"n\": 3}')", (channel, channel, channel))
    _publish(postgres_url, channel, {"n": 4})
    updates = [_next_update(client) for _ in range(4)]
    assert [u["data"]["n"] for u in updates] == ([1, 2, 3, 4] if outbox == "off" else [1, 3, 2, 4])
    assert [u["seq"] for u in updates] == [1, 2, 3, 4]
    assert len({u["cursor"].rsplit(":", 1)[0] for u in updates}) == 1  # one stream
    client.close()


def test_auto_listens_per_user_until_db_install_then_switches_with_one_resync(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    url = empty_database  # an app's database before `relay db install`
    relay = relay_factory({"DATABASE_URL": url, "RELAY_DB_CHECK_INTERVAL": "0.5"})
    listener = _listener(relay, userChannels="listen")
    assert listener["relaySql"] == 0
    client = relay.connect("auto1")
    channel = "user_Usage_auto1"
    notify_directly(url, channel, '{"before": "install"}')  # the app's own trigger's way
    first = _next_update(client)
    assert first["data"] == {"before": "install"}
    _listener(relay, listened=3)  # the shared channel and the user's two

    started = time.monotonic()
    install_schema(url)  # announces itself on the shared channel (kind i)
    listener = _listener(relay, userChannels="off", listened=1)
    print(f"auto switched to the shared channel {time.monotonic() - started:.3f}s after the "
          "install committed (including /health's push interval)")
    assert listener["relaySql"] == SQL_VERSION

    # The history moves from this listener's memory to the database's outbox: one resync,
    # with cursors of the database's history (outbox off, the same stream would go on).
    resync = client.expect("resync")
    assert resync["reason"] == "history changed"
    epoch = resync["cursors"][channel].split(":")[0]
    notify_directly(url, channel, '{"direct": "unheard now"}')
    _publish(url, channel, {"after": "install"})
    update = _next_update(client)
    assert update["data"] == {"after": "install"}
    assert update["seq"] == 1 and update["cursor"].startswith(f"{epoch}:1:")

    # relay's SQL removed: the periodic check notices and per-user LISTEN comes back.
    execute(url, "DROP SCHEMA relay CASCADE; DROP FUNCTION relay_publish(text, json); "
                 "DROP FUNCTION relay_notify(); DROP FUNCTION relay_notify_owner("
                 "text, text, text, text, json, text, boolean)")
    _listener(relay, userChannels="listen", listened=3)
    assert client.expect("resync")["reason"] == "history changed"  # back in memory: once
    notify_directly(url, channel, '{"direct": "heard again"}')
    update = _next_update(client)
    assert update["data"] == {"direct": "heard again"} and update["seq"] == 1
    client.close()


def test_a_per_user_notification_committed_after_the_install_is_unheard_before_its_unlisten(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    # `auto` switches when it reads the install's frame; its UNLISTENs follow a moment later.
    # A per-user notification committed after the install but read in that moment belongs
    # to the new mode (unheard, as in `off`), not to the old history: delivered from memory,
    # it would hand the client a cursor of a history it has just left.
    url = empty_database
    relay = relay_factory({"DATABASE_URL": url})
    _listener(relay, userChannels="listen")
    client = relay.connect("window")
    channel = "user_Usage_window"
    _listener(relay, listened=3)
    (listener,) = relay.listener_pids()
    # Stopped, the listener reads the install's frame and the direct notification together,
    # in commit order, before its link can UNLISTEN anything: the window, made certain.
    os.kill(listener, signal.SIGSTOP)
    try:
        install_schema(url)
        notify_directly(url, channel, '{"direct": "after the install"}')
    finally:
        os.kill(listener, signal.SIGCONT)
    assert client.expect("resync")["reason"] == "history changed"
    _publish(url, channel, {"after": "install"})
    update = _next_update(client)  # the direct one would come first without the rule
    assert update["data"] == {"after": "install"} and update["seq"] == 1
    _listener(relay, userChannels="off", listened=1)
    client.close()


@pytest.mark.parametrize("mode", ["off", "listen"])
def test_forced_modes_ignore_whether_relays_sql_is_installed(
        relay_factory: Callable[..., RelayProcess], empty_database: str, mode: str) -> None:
    relay = relay_factory({"DATABASE_URL": empty_database, "RELAY_USER_CHANNELS": mode})
    _listener(relay, userChannels=mode)
    install_schema(empty_database)
    _listener(relay, relaySql=SQL_VERSION)
    # After the install is heard: a client answered before it would get one resync as its
    # history moves to the database's outbox (test_durable_listener).
    client = relay.connect("forced")
    assert relay.health()[1]["listener"]["userChannels"] == mode
    notify_directly(empty_database, "user_Usage_forced", '{"direct": 1}')
    _publish(empty_database, "user_Usage_forced", {"shared": 1})
    first = _next_update(client)
    if mode == "listen":
        assert first["data"] == {"direct": 1}
        assert _next_update(client)["data"] == {"shared": 1}
    else:
        assert first["data"] == {"shared": 1}
    client.close()


def test_the_database_notify_channel_is_followed_when_it_changes(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    install_schema(empty_database)
    relay = relay_factory({"DATABASE_URL": empty_database})
    _listener(relay, userChannels="off", notifyChannel="relay")
    client = relay.connect("renamed")
    # The operator renames relay's channel in the database (db install with
    # RELAY_NOTIFY_CHANNEL does this): running relays hear the change and follow it.
    install_schema(empty_database, notify_channel="relay_v2")
    _listener(relay, notifyChannel="relay_v2", listened=2)
    conn = psycopg2.connect(empty_database)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT relay_publish('user_Usage_renamed', '{\"via\": \"v2\"}')")
    finally:
        conn.close()
    assert _next_update(client)["data"] == {"via": "v2"}
    client.close()
