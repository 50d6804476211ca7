"""Logs: one JSON object per line with a level and a pid, the user id where known, and never
a token or a query string, whatever way the token came and however it was refused."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest
import websocket

from relay.logs import JsonFormatter, route_gevent_errors
from tests.support import RelayProcess, wait_for


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
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


def _send_raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        try:
            return sock.recv(200)
        except OSError:
            return b""


@pytest.mark.slow
def test_every_line_is_json_with_level_pid_and_the_user(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory()
    relay.connect("json-user").close()
    relay.connect(token="not-a-jwt", expect_connected=False).expect_close()
    # Requests gevent itself complains about (it would write them raw to stderr), one of
    # them with a token in a malformed request line.
    token = relay.token("raw-user")
    for request in (b"GARBAGE\r\n\r\n",
                    f"GET /ws?token={token} HTTP/9.9\r\n\r\n".encode(),
                    f"GET /ws?token={token} HTTP/1.1 extra\r\n\r\n".encode(),
                    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"):
        _send_raw(relay.port, request)
    relay.stop()
    assert token.split(".")[2] not in relay.logs()
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
    # how long each WebSocket lived: its access line is written at the 101
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in closed)
    pids = {e["pid"] for e in parsed}
    assert len(pids) >= 4  # master, supervisor, listener, workers: each says who it is


@pytest.mark.slow
def test_text_logs_in_development_mode(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_LOG_FORMAT": "text"})
    relay.connect("text-user").close()
    relay.stop()
    lines = relay.logs().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert any(" INFO " in line and "text-user" in line for line in lines)


def test_a_greenlet_error_is_one_log_record_without_the_greenlet_arguments(
        caplog: pytest.LogCaptureFixture) -> None:
    hub = gevent.get_hub()
    route_gevent_errors()
    try:
        def fail(token: str) -> None:
            raise RuntimeError("boom")

        with caplog.at_level(logging.ERROR, logger="relay.gevent"):
            gevent.spawn(fail, "secret-token-argument").join()
    finally:
        del hub.print_exception  # back to gevent's own
    [record] = [r for r in caplog.records if r.name == "relay.gevent"]
    assert record.getMessage() == "unhandled RuntimeError in a greenlet"
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
    line = JsonFormatter().format(record)
    assert "\n" not in line and "secret-token-argument" not in line
    assert json.loads(line)["level"] == "error"


_LEAN_SCRIPT = r"""
import logging, sys, time
from relay import logs

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)

records = []
root = logging.getLogger()
root.handlers[:] = [Keep()]
root.setLevel("INFO")
time.time = lambda: 1790000000.25  # one timestamp for both lines

def line(formatter):
    records.clear()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("relay.connection").info(
            "user %s connected", "42", exc_info=True, extra={"user": "42", "event": "connected"})
    return records[0], formatter.format(records[0])

formatters = (logs.JsonFormatter(), logging.Formatter(logs.TEXT_FORMAT))
before = [line(f) for f in formatters]
logs.lean_records()
after = [line(f) for f in formatters]
for (_, old), (record, new) in zip(before, after):
    assert old == new, (old, new)
assert after[0][0].lineno == 0 and after[0][0].threadName is None, vars(after[0][0])
assert before[0][0].lineno > 0
print("same lines")
"""


def test_lean_records_change_no_line_in_either_format() -> None:
    """Records without the caller's place and the thread's name (``lean_records``, in every
    worker and in the listener) give the same JSON and text lines, traceback included."""
    done = subprocess.run([sys.executable, "-c", _LEAN_SCRIPT], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "same lines", done.stderr
