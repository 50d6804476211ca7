"""Floods, bounded in count and time, loopback only: unauthenticated hordes, connect churn,
message spam. Memory stays bounded, /health answers, bystanders are served."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Callable

import psutil

from tests.support import RelayProcess, notify, wait_for


def _open_raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def _close_code(sock: socket.socket) -> int | None:
    data = b""
    sock.settimeout(10)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    body = data.partition(b"\r\n\r\n")[2]
    if len(body) >= 4 and body[0] & 0x0F == 0x8:
        return struct.unpack("!H", body[2:4])[0]
    return None


def _rss(relay: RelayProcess) -> int:
    return sum(psutil.Process(p).memory_info().rss for p in relay.worker_pids())


def test_never_authenticating_horde_is_closed_4010(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_AUTH_TIMEOUT": "1"})
    bystander = relay.connect("horde-bystander")
    before = _rss(relay)
    socks = [_open_raw(relay.port) for _ in range(600)]
    assert relay.health()[0] == 200  # answers while 600 sockets wait
    codes = [_close_code(s) for s in socks]
    for s in socks:
        s.close()
    assert codes.count(4010) == len(codes), set(codes)
    notify(postgres_url, "user_Usage_horde-bystander", "{}")
    assert bystander.expect("update")["channel"] == "user_Usage_horde-bystander"
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 10)
    assert _rss(relay) - before < 64 * 2**20
    bystander.close()


def test_connect_churn_of_one_user(relay_factory: Callable[..., RelayProcess],
                                   postgres_url: str) -> None:
    relay = relay_factory()
    bystander = relay.connect("churn-bystander")
    deadline = time.monotonic() + 5
    rounds = 0
    while rounds < 150 and time.monotonic() < deadline:
        relay.connect("churner").close()
        rounds += 1
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 10,
             message="every churned connection accounted for")
    assert relay.health()[1]["connectedUsers"] == 1
    notify(postgres_url, "user_Usage_churn-bystander", "{}")
    assert bystander.expect("update")["channel"] == "user_Usage_churn-bystander"
    back = relay.connect("churner")
    notify(postgres_url, "user_Usage_churner", '{"still": 1}')
    assert back.expect("update")["data"] == {"still": 1}
    back.close()
    bystander.close()


def test_message_spam_is_closed_1008(relay_factory: Callable[..., RelayProcess],
                                     postgres_url: str) -> None:
    relay = relay_factory({"RELAY_CLIENT_MSG_RATE": "20"})
    bystander = relay.connect("spam-bystander")
    spammer = relay.connect("spammer")
    try:
        for _ in range(500):
            spammer.send({"type": "pong"})
    except OSError:
        pass  # the server may already have closed
    code, reason = spammer.expect_close()
    assert code == 1008 and "rate" in reason
    notify(postgres_url, "user_Usage_spam-bystander", "{}")
    assert bystander.expect("update")["channel"] == "user_Usage_spam-bystander"
    bystander.close()
