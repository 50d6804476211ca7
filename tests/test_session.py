"""Unit tests of a connection's token as its heartbeat sees it, in process: one
``token_expiring`` within RELAY_TOKEN_REFRESH_WINDOW, 4001 at the token's ``exp``, and a
refresh that starts the count again for its own ``exp`` (relay.worker.session, driven by
``Connection.tick`` as the worker's housekeeping drives it)."""

from __future__ import annotations

import io
import json
import struct
import time
from collections import Counter
from typing import Any

import gevent

from relay.auth import issue_token
from relay.config import Settings
from relay.worker.connection import Connection

SECRET = b"k" * 32


class _Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.draining = False  # as Node's: a close arms its abort timer unless draining

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def closed_with(self, code: Any) -> None:
        self.counters[f"close {code.code}"] += 1

    def count_auth_failure(self, reason: str) -> None:
        self.auth_failures[reason] += 1

    def revoked_at(self, user_id: str) -> float | None:
        return None


class _Socket:
    """Takes every byte at once."""

    def __init__(self) -> None:
        self.wire = bytearray()

    def send(self, data: bytes, flags: int = 0, timeout: float | None = None) -> int:
        self.wire += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.wire += data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def _messages(wire: bytes) -> list[Any]:
    """The server's frames: a text frame's JSON, or ``("close", code)``."""
    out: list[Any] = []
    offset = 0
    while offset < len(wire):
        opcode, length, head = wire[offset] & 0x0F, wire[offset + 1] & 0x7F, 2
        if length == 126:
            length, head = struct.unpack("!H", wire[offset + 2:offset + 4])[0], 4
        payload = bytes(wire[offset + head:offset + head + length])
        out.append(json.loads(payload) if opcode == 0x1
                   else ("close", struct.unpack("!H", payload[:2])[0]))
        offset += head + length
    return out


def _live(expires_in: int) -> tuple[Connection, _Socket, int]:
    """An attached connection of user ``u1`` whose token expires in ``expires_in`` seconds;
    the window is 60 s; no ping falls due in these tests. Returns its token's ``exp``."""
    settings = Settings(database_url="postgresql://x", jwt_secret=SECRET,
                        token_refresh_window=60.0)
    sock = _Socket()
    conn = Connection(_Node(settings), sock, io.BytesIO(), "test")  # type: ignore[arg-type]
    exp = int(time.time()) + expires_in
    conn.session.user_id = "u1"
    conn.session.expires_at = exp
    conn.session.live = True
    conn.next_ping = time.monotonic() + 3600
    return conn, sock, exp


def _tick(conn: Connection, wall: float) -> None:
    conn.tick(time.monotonic(), wall)
    gevent.sleep(0)


def test_the_token_is_warned_once_in_its_window_then_closed_with_4001_at_its_exp() -> None:
    conn, sock, exp = _live(expires_in=100)
    for wall in (exp - 61, exp - 59, exp - 30, exp - 1):
        _tick(conn, wall)
    assert conn.closing is None
    _tick(conn, exp)
    assert _messages(sock.wire) == [
        {"type": "token_expiring", "expiresAt": exp, "in": 59}, ("close", 4001)]
    assert conn.node.auth_failures["token expired"] == 1  # type: ignore[attr-defined]


def test_a_refresh_is_warned_again_for_its_own_exp_and_outlives_the_first() -> None:
    conn, sock, exp = _live(expires_in=50)
    now = exp - 50
    _tick(conn, now)  # inside the window at once: warned
    conn.session.refresh(conn, issue_token("u1", SECRET, ttl=80))
    refreshed = conn.session.expires_at
    assert refreshed > exp
    # Before the first token's exp, but within the window of the new one: warned again.
    _tick(conn, refreshed - 55)
    assert [m["type"] for m in _messages(sock.wire)] == [
        "token_expiring", "token_refreshed", "token_expiring"]
    assert _messages(sock.wire)[-1] == {"type": "token_expiring", "expiresAt": refreshed,
                                        "in": 55}
    _tick(conn, exp + 1)  # past the first token's exp: still open, nothing more to say
    assert len(_messages(sock.wire)) == 3
    assert conn.closing is None
