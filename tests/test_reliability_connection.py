"""One connection's life limits: heartbeats, token lifetime, backpressure, caps (drain is in
test_reliability_drain.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable

import psutil
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


def test_client_that_never_pongs_is_closed_with_4011(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_PING_INTERVAL": "0.3", "RELAY_PONG_TIMEOUT": "1"})
    silent = relay.connect("hb1", answer_pings=False)
    alive = relay.connect("hb2")
    assert silent.expect("ping")["type"] == "ping"
    deadline = time.monotonic() + 10
    while silent.close_code is None and time.monotonic() < deadline:
        silent.poll(0.1)
        alive.poll(0.1)  # reading answers its pings
    assert silent.close_code == 4011
    # The one that answers stays connected for several pong timeouts, pinged all along…
    assert alive.pings_within(2.0) >= 3
    # …and nothing but pings came meanwhile: no close, no other message.
    assert_marker_comes_next(postgres_url, alive)
    alive.close()


def _bystander_served(relay: RelayProcess, bystander: Client, url: str) -> None:
    """The other client is still open and receives its update promptly."""
    user = bystander.connected["userId"]
    notify(url, f"user_Usage_{user}", '{"bystander": true}')
    assert bystander.expect("update", timeout=5)["data"] == {"bystander": True}
    assert bystander.close_code is None
    bystander.close()


def test_token_expiring_then_4001_at_exp(relay_factory: Callable[..., RelayProcess],
                                         postgres_url: str) -> None:
    relay = relay_factory({"RELAY_TOKEN_REFRESH_WINDOW": "2"})
    bystander = relay.connect("exp1-by")
    client = relay.connect(token=relay.token("exp1", ttl=3))
    warning = client.expect("token_expiring", timeout=5)
    assert warning["expiresAt"] == client.connected["expiresAt"]
    code, reason = client.expect_close(timeout=10)
    assert code == 4001 and "expired" in reason
    _bystander_served(relay, bystander, postgres_url)


def test_refresh_extends_the_connection(relay_factory: Callable[..., RelayProcess],
                                        postgres_url: str) -> None:
    relay = relay_factory({"RELAY_TOKEN_REFRESH_WINDOW": "2"})
    client = relay.connect(token=relay.token("exp2", ttl=3))
    client.expect("token_expiring", timeout=5)
    client.send({"type": "refresh", "token": relay.token("exp2", ttl=60)})
    refreshed = client.expect("token_refreshed")
    assert refreshed["expiresAt"] > client.connected["expiresAt"] + 30
    # Past the first token's exp and a housekeeping tick, which would have closed it 4001;
    # the marker comes first, so nothing did.
    time.sleep(max(0.0, client.connected["expiresAt"] + 1.5 - time.time()))
    assert_marker_comes_next(postgres_url, client)
    client.close()


def test_refresh_with_another_users_token_is_refused(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    bystander = relay.connect("exp3-by")
    client = relay.connect("exp3")
    client.send({"type": "refresh", "token": relay.token("someone-else")})
    assert client.expect_close()[0] == 4003
    _bystander_served(relay, bystander, postgres_url)


def _raw_client(relay: RelayProcess, user: str) -> socket.socket:
    """A client that authenticates and then never reads (its receive window fills)."""
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token={relay.token(user)} HTTP/1.1\r\nHost: x\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def _close_code_at_end(sock: socket.socket) -> int | None:
    sock.settimeout(15)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    offset = data.find(b"\r\n\r\n") + 4  # after the 101, walk the frames to the close
    while offset + 2 <= len(data):
        opcode, length = data[offset] & 0x0F, data[offset + 1] & 0x7F
        head = 2
        if length == 126:
            length, head = struct.unpack("!H", data[offset + 2:offset + 4])[0], 4
        elif length == 127:
            length, head = struct.unpack("!Q", data[offset + 2:offset + 10])[0], 10
        if opcode == 0x8:
            return struct.unpack("!H", data[offset + head:offset + head + 2])[0]
        offset += head + length
    return None


def test_slow_consumer_is_closed_with_4009_and_delays_nobody(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_QUEUE_MAX_MESSAGES": "50", "RELAY_QUEUE_MAX_BYTES": "65536"})
    slow = _raw_client(relay, "slow")
    fast = relay.connect("fast")
    wait_for(lambda: relay.health()[1]["totalConnections"] == 2, 5)
    # ~14 MB for a client whose socket buffers hold a few hundred KB: its queue must overflow.
    for i in range(4):
        execute(postgres_url, "SELECT relay_publish('user_Usage_slow', "
                              "to_json(repeat('x', 7000) || g)) FROM generate_series(1, 500) AS g")
        notify(postgres_url, "user_Usage_fast", json.dumps({"i": i}))
        assert fast.expect("update", timeout=5)["data"] == {"i": i}
    # When the client reads again it finds what was in flight, then the 4009 close frame.
    assert _close_code_at_end(slow) == 4009
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 15,
             message="the slow consumer to be dropped")
    workers = [psutil.Process(p) for p in relay.worker_pids()]
    assert all(w.memory_info().rss < 300 * 2**20 for w in workers)
    fast.close()


def test_connections_per_user_cap_4008(relay_factory: Callable[..., RelayProcess],
                                       postgres_url: str) -> None:
    relay = relay_factory({"RELAY_MAX_CONNECTIONS_PER_USER": "2"})
    first, second = relay.connect("capped"), relay.connect("capped")
    third = relay.connect("capped", expect_connected=False)
    assert third.expect_close()[0] == 4008
    other = relay.connect("not-capped")
    notify(postgres_url, "user_Usage_capped", '{"n": 1}')
    assert first.expect("update")["data"] == second.expect("update")["data"] == {"n": 1}
    first.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] == 2, 5)
    relay.connect("capped").close()  # room again
    second.close()
    _bystander_served(relay, other, postgres_url)


def test_connections_per_worker_cap_1013_and_health_still_answers(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_MAX_CONNECTIONS_PER_WORKER": "1"}, workers=1)
    first = relay.connect("w1")
    second = relay.connect("w2", expect_connected=False)
    assert second.expect_close()[0] == 1013
    # /health serves the listener's figures of the last second: counted within a moment.
    wait_for(lambda: relay.health()[1].get("totalConnections") == 1, 10)
    assert relay.health()[0] == 200
    _bystander_served(relay, first, postgres_url)


def test_auth_timeout_4010(relay_factory: Callable[..., RelayProcess],
                          postgres_url: str) -> None:
    relay = relay_factory({"RELAY_AUTH_TIMEOUT": "1"})
    bystander = relay.connect("auth-by")
    client = relay.connect(authenticate=False, expect_connected=False)
    started = time.monotonic()
    assert client.expect_close(timeout=10)[0] == 4010
    assert time.monotonic() - started < 5
    _bystander_served(relay, bystander, postgres_url)


def test_message_over_the_limit_is_1009(relay_factory: Callable[..., RelayProcess],
                                        postgres_url: str) -> None:
    relay = relay_factory({"RELAY_MAX_MESSAGE_BYTES": "1024"})
    client = relay.connect("big-in")
    bystander = relay.connect("by-in")
    client.send({"type": "pong", "pad": "x" * 2000})
    assert client.expect_close()[0] == 1009
    _bystander_served(relay, bystander, postgres_url)
