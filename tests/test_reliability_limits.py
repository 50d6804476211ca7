"""Backpressure and limits on the wire, beyond test_reliability_connection.py: what a slow
consumer really receives (a clean prefix of its stream, then 4009 or the end of the socket)
and what its resume gets; 1009 decided from the frame header alone; a worker at its
WebSocket capacity answers 1013 while /health still finds a slot (trap 8); a worker serves
RELAY_HANDSHAKE_CONCURRENCY handshakes at once, the next wait in the kernel's queue, and a
WebSocket waiting for its auth message holds no slot."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Client, RelayProcess, execute, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


def _bystander_served(bystander: Client, url: str) -> None:
    """The other client is still open and receives its update."""
    user = bystander.connected["userId"]
    notify(url, f"user_Usage_{user}", '{"bystander": true}')
    assert bystander.expect("update", timeout=10)["data"] == {"bystander": True}
    assert bystander.close_code is None
    bystander.close()


def _upgrade(relay: RelayProcess, query: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws{query} HTTP/1.1\r\nHost: x\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def _read_to_end(sock: socket.socket, timeout: float = 20) -> bytes:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # read back at full speed
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except OSError:
        pass
    return bytes(data)


def _server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """The frames the server sent after its 101, strictly (unmasked, FIN set, nothing after
    the close frame), and whether the stream was cut inside its last frame: a socket that is
    given up on ends where the kernel's buffer ended, which may be mid-frame."""
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    frames = []
    offset = 0
    while offset < len(rest):
        if len(rest) - offset < 10:
            return frames, True
        first, second = rest[offset], rest[offset + 1]
        assert first & 0x80 and not first & 0x70 and not second & 0x80, f"bad header {first:x}"
        length, size = second & 0x7F, 2
        if length == 126:
            length, size = struct.unpack_from("!H", rest, offset + 2)[0], 4
        elif length == 127:
            length, size = struct.unpack_from("!Q", rest, offset + 2)[0], 10
        payload = rest[offset + size:offset + size + length]
        if len(payload) < length:
            return frames, True
        frames.append((first & 0x0F, payload))
        offset += size + length
        if first & 0x0F == 0x8:
            assert offset == len(rest), "bytes after the close frame"
    return frames, False


def _metric(relay: RelayProcess, name: str, labels: dict[str, str] | None = None) -> float:
    with urllib.request.urlopen(relay.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return 0.0


def test_slow_consumer_stream_is_a_clean_prefix_and_its_resume_is_a_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_QUEUE_MAX_MESSAGES": "50", "RELAY_QUEUE_MAX_BYTES": "65536",
                           "RELAY_HISTORY_SIZE": "2000"})
    slow = _upgrade(relay, f"?token={relay.token('slowc')}")
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    fast = relay.connect("fast")
    wait_for(lambda: relay.health()[1]["totalConnections"] == 2, 10)
    workers = [psutil.Process(p) for p in relay.worker_pids()]
    before = sum(w.memory_info().rss for w in workers)
    # ~14 MB for a client whose socket buffers hold a few MB: its queue must overflow.
    for i in range(4):
        execute(postgres_url, "SELECT relay_publish('user_Usage_slowc', "
                              "json_build_object('g', g, 'pad', repeat('x', 7000))) "
                              "FROM generate_series(1, 500) AS g")
        notify(postgres_url, "user_Usage_fast", json.dumps({"i": i}))
        # Delivered to the reading client while the other one's queue is full.
        assert fast.expect("update", timeout=10)["data"] == {"i": i}
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 20,
             message="the slow consumer to be dropped")
    after = sum(w.memory_info().rss for w in workers)
    assert after - before < 64 * 2**20, f"workers grew by {(after - before) >> 20} MiB"
    # Worker counters reach /metrics through the listener's push: within a second or two.
    wait_for(lambda: _metric(relay, "relay_slow_consumer_drops_total") == 1, 10)
    assert _metric(relay, "relay_closes_total", {"code": "4009"}) == 1
    # Reading again, the client finds a clean prefix of its stream: whole JSON messages, seq
    # without gaps, ending with the 4009 close frame (had it read within the close timeout)
    # or cut where the kernel's buffer ended. Either way its last cursor is exact.
    frames, cut = _server_frames(_read_to_end(slow))
    slow.close()
    if not cut:
        assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 4009
        frames.pop()
    assert all(opcode == 0x1 for opcode, _ in frames)
    messages = [json.loads(payload) for _, payload in frames]
    assert messages[0]["type"] == "connected"
    updates = [m for m in messages if m["type"] == "update"]
    assert 0 < len(updates) < 2000
    assert [m["seq"] for m in updates] == list(range(1, len(updates) + 1))
    assert [m["data"]["g"] for m in updates] == [(s - 1) % 500 + 1 for s in range(
        1, len(updates) + 1)]
    # Resuming from there would replay more than its queue holds (and overflow again, for
    # ever): it is told to resync instead.
    back = relay.connect("slowc", resume={"user_Usage_slowc": updates[-1]["cursor"]})
    resync = back.expect("resync")
    assert resync == {"type": "resync", "reason": "too far behind",
                      "channels": ["user_Usage_slowc"],
                      "cursors": {"user_Usage_slowc": resync["cursors"]["user_Usage_slowc"]}}
    assert resync["cursors"]["user_Usage_slowc"].split(":")[1] == "2000"  # seq 2000
    notify(postgres_url, "user_Usage_slowc", '{"g": "live"}')
    assert back.expect("update")["data"] == {"g": "live"}
    back.close()
    _bystander_served(fast, postgres_url)


def test_message_size_is_refused_1009_from_the_frame_header(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_MAX_MESSAGE_BYTES": "1024"})
    bystander = relay.connect("by-in")
    sock = _upgrade(relay, f"?token={relay.token('big-in')}")
    # A text frame announcing 2^40 bytes, and not one byte of it: only the header can be
    # what the 1009 answers.
    sock.sendall(bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 40) + os.urandom(4))
    frames, _ = _server_frames(_read_to_end(sock, 10))
    sock.close()
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1009
    # A message just under the limit is fine; one just over it is refused as well.
    client = relay.connect("big-in")
    client.send({"type": "pong", "pad": "x" * 900})
    client.round_trip()  # its pong comes first: the message under the limit was taken
    client.send({"type": "pong", "pad": "x" * 1100})
    assert client.expect_close()[0] == 1009
    _bystander_served(bystander, postgres_url)


def test_worker_at_capacity_refuses_1013_and_health_still_answers(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    # A budget of 20 connections: relay takes WebSockets up to 10 and answers 1013 after that,
    # so that /health always finds a file descriptor and a slot of the pool (trap 8).
    relay = relay_factory({"RELAY_WORKER_CONNECTIONS": "20"}, workers=1)
    held = [relay.connect(f"full{i}") for i in range(10)]
    refused = [relay.connect(f"over{i}", expect_connected=False) for i in range(3)]
    assert [c.expect_close()[0] for c in refused] == [1013] * 3
    answers: list[int] = []

    def ask() -> None:
        answers.append(relay.health()[0])
    askers = [threading.Thread(target=ask) for _ in range(5)]
    for thread in askers:
        thread.start()
    for thread in askers:
        thread.join(20)
    assert answers == [200] * 5
    # /health serves the listener's figures of the last second: counted within a moment.
    wait_for(lambda: relay.health()[1].get("totalConnections") == 10, 10)
    assert relay.health()[0] == 200
    for client in held[1:]:
        client.close()
    wait_for(lambda: relay.health()[1]["totalConnections"] == 1, 10)
    relay.connect("room-again").close()
    _bystander_served(held[0], postgres_url)


def _slow_request(relay: RelayProcess) -> socket.socket:
    """A connection whose request line never ends: it holds a slot of the worker's pool for
    RELAY_HANDSHAKE_TIMEOUT."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    sock.sendall(b"GET /ws?tok")
    return sock


def test_a_full_handshake_pool_makes_the_next_connection_wait_its_turn(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    # A reconnect storm must be served a few handshakes at a time, the rest waiting in the
    # kernel's accept queue at no cost: a pool the size of the worker's connections took
    # 17,000 reconnecting clients at once on one worker, which then ran out of file
    # descriptors and never answered /health again (bench scale).
    relay = relay_factory({"RELAY_HANDSHAKE_CONCURRENCY": "2", "RELAY_HANDSHAKE_TIMEOUT": "60"},
                          workers=1)
    slow = [_slow_request(relay) for _ in range(2)]
    connected: list[float] = []

    def third() -> None:
        client = relay.connect("third", timeout=30)
        connected.append(time.monotonic())
        client.close()

    thread = threading.Thread(target=third)
    thread.start()
    thread.join(1.5)  # its TCP connection is in the kernel's queue; the worker takes no more
    assert not connected, "a third handshake was served while the pool was full"
    freed_at = time.monotonic()
    slow[0].close()  # a slot comes free: the queued connection is served
    thread.join(20)
    assert connected and connected[0] > freed_at
    slow[1].close()


def test_a_websocket_waiting_for_its_auth_message_holds_no_handshake_slot(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    # Clients that open a WebSocket and never authenticate (RELAY_AUTH_TIMEOUT, 10 s each)
    # would otherwise fill a pool of RELAY_HANDSHAKE_CONCURRENCY and keep every new
    # handshake, and /health, waiting.
    relay = relay_factory({"RELAY_HANDSHAKE_CONCURRENCY": "2", "RELAY_AUTH_TIMEOUT": "60"},
                          workers=1)
    mute = [relay.connect(authenticate=False, expect_connected=False) for _ in range(4)]
    assert relay.health()[0] == 200
    client = relay.connect("speaks")  # token in its first message, like the JS client
    notify(postgres_url, "user_Usage_speaks", '{"n": 1}')
    assert client.expect("update")["data"] == {"n": 1}
    for other in (*mute, client):
        other.close()
