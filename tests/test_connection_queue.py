"""Unit tests of one connection's outbound queue and its backpressure policy: a frame the
socket takes goes out at once; a queue over RELAY_QUEUE_MAX_MESSAGES or _BYTES closes the
client with 4009; whatever overflows, the bytes that reach the socket are whole WebSocket
frames, ending with the 4009 close frame."""

from __future__ import annotations

import io
import struct
from collections import Counter
from typing import Any

import gevent

from relay.config import Settings
from relay.worker.connection import Connection
from relay.worker.websocket import text_frame


class _Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def closed_with(self, code: Any) -> None:
        self.counters[f"close {code.code}"] += 1


class _Socket:
    """Takes ``first`` bytes of the first send, then nothing until ``open_up()``."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.wire = bytearray()
        self.blocked = gevent.event.Event()

    def send(self, data: bytes, flags: int = 0, timeout: float | None = None) -> int:
        taken = data[:self.first]
        self.first = 0
        self.wire += taken
        if not taken:
            raise BlockingIOError
        return len(taken)

    def sendall(self, data: bytes) -> None:
        self.blocked.wait()
        self.wire += data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def _frames(wire: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset < len(wire):
        opcode, length, head = wire[offset] & 0x0F, wire[offset + 1] & 0x7F, 2
        if length == 126:
            length, head = struct.unpack("!H", wire[offset + 2:offset + 4])[0], 4
        elif length == 127:
            length, head = struct.unpack("!Q", wire[offset + 2:offset + 10])[0], 10
        frames.append((opcode, bytes(wire[offset + head:offset + head + length])))
        offset += head + length
    assert offset == len(wire), "the stream ends inside a frame"
    return frames


def test_overflow_keeps_the_rest_of_a_begun_frame() -> None:
    settings = Settings(database_url="postgresql://x", jwt_secret=b"k" * 32,
                        queue_max_messages=3, queue_max_bytes=1 << 20)
    sock = _Socket(first=10)
    conn = Connection(_Node(settings), sock, io.BytesIO(), "test")  # type: ignore[arg-type]
    payloads = [f'{{"n":{i},"pad":"{"x" * 200}"}}'.encode() for i in range(6)]
    for payload in payloads:
        conn.enqueue(text_frame(payload))
    sock.blocked.set()
    gevent.sleep(0.01)
    frames = _frames(bytes(sock.wire))
    assert frames[0] == (0x1, payloads[0])  # begun on the wire, so finished whole
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 4009
    assert conn.node.counters["slow_consumer"] == 1


def _connection(first: int = 0, **limits: int) -> tuple[Connection, _Socket]:
    settings = Settings(database_url="postgresql://x", jwt_secret=b"k" * 32, **limits)
    sock = _Socket(first)
    return Connection(_Node(settings), sock, io.BytesIO(), "test"), sock  # type: ignore[arg-type]


def _close_code(frame: tuple[int, bytes]) -> int | None:
    opcode, payload = frame
    return struct.unpack("!H", payload[:2])[0] if opcode == 0x8 else None


def test_a_frame_the_socket_takes_whole_goes_out_at_once() -> None:
    conn, sock = _connection(first=1 << 20)
    conn.enqueue(text_frame(b'{"n":1}'))
    assert _frames(bytes(sock.wire)) == [(0x1, b'{"n":1}')]
    assert conn.closing is None


def test_a_queue_at_its_message_limit_is_kept() -> None:
    conn, sock = _connection(queue_max_messages=3)
    for i in range(3):
        conn.enqueue(text_frame(b"%d" % i))
    assert conn.closing is None
    sock.blocked.set()
    gevent.sleep(0.01)
    assert _frames(bytes(sock.wire)) == [(0x1, b"0"), (0x1, b"1"), (0x1, b"2")]


def test_one_message_over_the_limit_closes_4009_and_drops_the_queue() -> None:
    conn, sock = _connection(queue_max_messages=3)
    for i in range(4):
        conn.enqueue(text_frame(b"%d" % i))
    assert conn.closing is not None and conn.closing.code == 4009
    assert conn.node.counters["slow_consumer"] == 1
    assert conn.node.counters["close 4009"] == 1
    sock.blocked.set()
    gevent.sleep(0.01)
    # Nothing of the queue had begun on the wire: only the close frame goes.
    assert [_close_code(f) for f in _frames(bytes(sock.wire))] == [4009]


def test_bytes_over_the_limit_close_4009() -> None:
    conn, _ = _connection(queue_max_bytes=1024)
    conn.enqueue(text_frame(b"x" * 500))
    conn.enqueue(text_frame(b"x" * 500))
    assert conn.closing is None  # two frames of 504 bytes queued
    conn.enqueue(text_frame(b"x" * 14))  # 16 more: 1024 is the limit, not over it
    assert conn.closing is None
    conn.enqueue(text_frame(b""))
    assert conn.closing is not None and conn.closing.code == 4009


def test_nothing_is_queued_after_the_close() -> None:
    conn, sock = _connection(queue_max_messages=1)
    conn.enqueue(text_frame(b"a"))
    conn.enqueue(text_frame(b"b"))  # over: 4009
    conn.enqueue(text_frame(b"c"))
    sock.blocked.set()
    gevent.sleep(0.01)
    assert [_close_code(f) for f in _frames(bytes(sock.wire))] == [4009]
    assert conn.node.counters["slow_consumer"] == 1
