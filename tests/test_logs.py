"""Logs: one JSON object per line with a level and a pid, the user id where known, and never
a token or a query string, whatever way the token came and however it was refused."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import websocket

from tests.support import RelayProcess, wait_for


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_token_or_query_string_reaches_any_log_line(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    query_token = relay.token("logged-q")
    message_token = relay.token("logged-m")
    bad_token = relay.token("logged-x")[:-4] + "AAAA"  # bad signature
    refresh_token = relay.token("someone-else")
    expired_token = relay.token("logged-e", ttl=-60)
    tokens = (query_token, message_token, bad_token, refresh_token, expired_token)

    relay.connect(token=query_token, via="query", resume={"user_Usage_logged-q": "e:1"}).close()
    relay.connect(token=message_token).close()
    for token, via in ((bad_token, "query"), (expired_token, "message")):
        refused = relay.connect(token=token, via=via, expect_connected=False)
        assert refused.expect_close()[0] == 4001
    # A refresh naming another user is refused 4003 on a live connection.
    live = relay.connect("logged-r")
    live.send({"type": "refresh", "token": refresh_token})
    assert live.expect_close()[0] == 4003
    # The handshake refused before any upgrade (origin), and plain HTTP with a token query.
    try:
        websocket.create_connection(f"{relay.ws_url}?token={query_token}",
                                    origin="https://evil.example.com", timeout=5)
        raise AssertionError("a foreign origin was upgraded")
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 403
    assert _get(f"{relay.http_url}/health?token={query_token}") == 200
    assert _get(f"{relay.http_url}/ws?token={query_token}") in (400, 426)
    assert _get(f"{relay.http_url}/nowhere?token={query_token}") == 404
    wait_for(lambda: relay.logs().count('"event": "closed"') >= 5, 10, 0.1,
             "the closes to be logged")
    relay.stop()

    for path in (relay.stdout_path, relay.stderr_path):
        text = path.read_text()
        for token in tokens:
            for part in token.split(".")[1:]:  # the claims and the signature
                assert part not in text, f"a token part reached {path.name}"
        assert "token=" not in text and "resume=" not in text
        assert "?" not in "".join(json.loads(line).get("msg", "") for line in text.splitlines()
                                   if '"gunicorn.access"' in line)
    # The refusals are there, with their reasons, and without the token.
    logs = relay.logs()
    assert "bad signature" in logs and "token expired" in logs
    assert "refused WebSocket from origin" in logs


def test_every_line_is_json_with_level_pid_and_the_user(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    relay.connect("json-user").close()
    relay.connect(token="not-a-jwt", expect_connected=False).expect_close()
    relay.stop()
    lines = [line for line in relay.logs().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every single line, every process
    assert all({"ts", "level", "pid", "logger", "msg"} <= set(entry) for entry in parsed)
    assert {e["level"] for e in parsed} <= {"debug", "info", "warning", "error", "critical"}
    loggers = {e["logger"] for e in parsed}
    assert {"relay.listener", "relay.connection", "gunicorn.error"} <= loggers
    connected = [e for e in parsed if e.get("event") == "connected"]
    closed = [e for e in parsed if e.get("event") == "closed"]
    assert [e["user"] for e in connected] == ["json-user"]
    assert any(e.get("user") == "json-user" for e in closed)
    pids = {e["pid"] for e in parsed}
    assert len(pids) >= 4  # master, supervisor, listener, workers: each says who it is


def test_text_logs_in_development_mode(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_LOG_FORMAT": "text"})
    relay.connect("text-user").close()
    relay.stop()
    lines = relay.logs().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert any(" INFO " in line and "text-user" in line for line in lines)
