"""Requests a worker sends the listener never outlive their connection (security review,
finding 1): a client's ``resume`` is validated up front — a malformed one is a 1008 with a
reason, never a 1011 — and a connection that ends while its request is in flight leaves
nothing behind in its worker."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

import pytest

from tests.support import Client, RelayProcess, wait_for

pytestmark = pytest.mark.slow


def _in_flight(relay: RelayProcess) -> int:
    """``attachesInFlight`` of the (only) worker."""
    return relay.health()[1]["worker"]["attachesInFlight"]


def _auth_with_nested_resume(token: str, depth: int) -> str:
    """An auth message whose cursor is nested ``depth`` lists deep (as text: the standard
    library cannot encode that depth itself, but it decodes it)."""
    cursor = "[" * depth + '"1:1"' + "]" * depth
    return f'{{"type":"auth","token":"{token}","resume":{{"user_Subscription_deep":{cursor}}}}}'


def test_a_deeply_nested_resume_is_1008_and_leaves_no_request_behind(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory(workers=1)
    # Deep enough to parse, and (before the fix) to fail only when the worker re-encoded it
    # for the listener: a 1011, and an ~89 KB request kept for the worker's life.
    # How deep still parses depends on the stack depth of the worker's greenlet; either way
    # the answer is a 1008 with its reason.
    for depth in (50, 500, 900, 950, 983, 990, 2000):
        client = Client(relay.ws_url, None)
        client.send(_auth_with_nested_resume(relay.token("deep"), depth))
        code, reason = client.expect_close()
        assert code == 1008, (depth, code, reason)
        assert reason in ("invalid resume: a cursor is not a short string",
                          "message is not JSON"), (depth, reason)
    wait_for(lambda: _in_flight(relay) == 0, 5, message="no request left in the worker")
    assert "Traceback" not in relay.logs()
    relay.connect("deep").close()  # the user is not locked out


@pytest.mark.parametrize(("resume", "reason"), [
    (["user_Subscription_m:1"], "invalid resume: not an object"),
    ("user_Subscription_m", "invalid resume: not an object"),
    ({f"user_Subscription_{i}": "a:1" for i in range(33)}, "invalid resume: too many entries"),
    ({"user_Subscription_m": 17}, "invalid resume: a cursor is not a short string"),
    ({"user_Subscription_m": ["a:1"]}, "invalid resume: a cursor is not a short string"),
    ({"user_Subscription_m": "a:" + "1" * 200}, "invalid resume: a cursor is not a short string"),
    ({"u" * 64: "a:1"}, "invalid resume: a key is not a channel name"),
    ({"": "a:1"}, "invalid resume: a key is not a channel name"),
])
def test_a_malformed_resume_is_closed_with_1008_and_its_reason(
        relay: RelayProcess, resume: object, reason: str) -> None:
    client = Client(relay.ws_url, None)
    client.send({"type": "auth", "token": relay.token("m"), "resume": resume})
    assert client.expect_close() == (1008, reason)


def test_a_null_or_unknown_cursor_is_answered_with_resync(relay: RelayProcess) -> None:
    # null is what a resync names for a channel without a position: sending it back is valid.
    client = relay.connect("n", resume={"user_Subscription_n": None, "user_Usage_n": "zz:9"})
    assert client.connected["resumed"] is False
    resync = client.expect("resync")
    assert sorted(resync["channels"]) == ["user_Subscription_n", "user_Usage_n"]
    client.close()


def test_a_resume_query_that_is_not_json_is_1008(relay: RelayProcess) -> None:
    client = Client(f"{relay.ws_url}?token={relay.token('q')}&resume=%7B%22user_", None)
    assert client.expect_close() == (1008, "invalid resume: not JSON")


def test_cursors_of_other_users_channels_are_ignored(relay: RelayProcess) -> None:
    # A client whose user changed may still hold the previous user's cursors.
    client = relay.connect("mine", resume={"user_Subscription_theirs": "x:1"})
    assert client.connected["resumed"] is False
    assert "user_Subscription_theirs" not in client.connected["cursors"]
    client.send({"type": "pong"})  # no resync for a channel that is not the user's
    client.close()


def test_a_connection_that_gives_up_while_the_listener_is_away_leaves_no_request(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory(workers=1)
    (supervisor,) = relay.supervisor_pids()
    (listener,) = relay.listener_pids()
    os.kill(supervisor, signal.SIGSTOP)  # nobody restarts the listener…
    try:
        os.kill(listener, signal.SIGKILL)
        wait_for(lambda: relay.health()[0] == 503, 10, message="503 without a listener")
        client = relay.connect("waiting", expect_connected=False)
        assert client.expect_close(timeout=20) == (1013, "listener unavailable")
        # It used to stay until a listener answered it (and was then attached for nobody).
        wait_for(lambda: _in_flight(relay) == 0, 5, message="no request left in the worker")
    finally:
        os.kill(supervisor, signal.SIGCONT)  # …until now
    wait_for(lambda: relay.health()[0] == 200, 20, message="the listener back")
    assert relay.health()[1]["totalConnections"] == 0
    late = relay.connect("waiting")
    assert json.dumps(late.connected)  # attached normally
    late.close()
