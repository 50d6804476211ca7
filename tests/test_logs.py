"""Logs: JSON lines with a level and a pid, and never a token or a query string."""

from __future__ import annotations

import json
from collections.abc import Callable

import websocket

from tests.support import RelayProcess, wait_for


def test_no_token_reaches_any_log_line(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    query_token = relay.token("logged-q")
    message_token = relay.token("logged-m")
    bad_token = relay.token("logged-x")[:-4] + "AAAA"  # bad signature
    relay.connect(token=query_token, via="query").close()
    relay.connect(token=message_token).close()
    refused = relay.connect(token=bad_token, via="query", expect_connected=False)
    assert refused.expect_close()[0] == 4001
    try:  # an origin refusal, with the token in the URL
        websocket.create_connection(f"{relay.ws_url}?token={query_token}",
                                    origin="https://evil.example.com", timeout=5)
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 403
    wait_for(lambda: "logged-x" in relay.logs() or "4001" in relay.logs(), 5)
    relay.stop()
    logs = relay.logs()
    for token in (query_token, message_token, bad_token):
        for part in token.split("."):
            assert part not in logs
    assert "token=" not in logs


def test_every_line_is_json_with_level_and_pid(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    relay.connect("json-user").close()
    relay.stop()
    lines = [line for line in relay.logs().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]
    assert all({"ts", "level", "pid", "msg"} <= set(entry) for entry in parsed)
    connection_lines = [e for e in parsed if e.get("logger") == "relay.connection"]
    assert any(e.get("user") == "json-user" for e in connection_lines)


def test_text_logs_in_development_format(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_LOG_FORMAT": "text"})
    relay.stop()
    first = relay.logs().splitlines()[0]
    assert not first.startswith("{")
    assert " INFO " in first
