"""Unit tests of one connection's writer, its outbound queue and backpressure decision: a
frame the socket takes goes out at once; a queue over RELAY_QUEUE_MAX_MESSAGES or _BYTES is
a slow consumer (4009), which the connection obeys; whatever overflows, the bytes that reach
the socket are whole WebSocket frames, ending with the close frame."""

from __future__ import annotations

import io
import struct
from collections import Counter
from typing import Any

import gevent

from relay import closecodes
from relay.config import Settings
from relay.worker.connection import Connection
from relay.worker.websocket import close_frame, text_frame
from relay.worker.writer import Writer


class _Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self.draining = False  # as Node's: a close arms its abort timer unless draining

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


def _writer(first: int = 0, max_messages: int = 1000, max_bytes: int = 1 << 20
            ) -> tuple[Writer, _Socket]:
    sock = _Socket(first)
    return Writer(sock, max_messages, max_bytes), sock  # type: ignore[arg-type]


def _close_code(frame: tuple[int, bytes]) -> int | None:
    opcode, payload = frame
    return struct.unpack("!H", payload[:2])[0] if opcode == 0x8 else None


def test_a_frame_the_socket_takes_whole_goes_out_at_once() -> None:
    writer, sock = _writer(first=1 << 20)
    assert writer.enqueue(text_frame(b'{"n":1}')) is None
    assert _frames(bytes(sock.wire)) == [(0x1, b'{"n":1}')]


def test_a_queue_at_its_message_limit_is_kept() -> None:
    writer, sock = _writer(max_messages=3)
    assert [writer.enqueue(text_frame(b"%d" % i)) for i in range(3)] == [None] * 3
    sock.blocked.set()
    gevent.sleep(0.01)
    assert _frames(bytes(sock.wire)) == [(0x1, b"0"), (0x1, b"1"), (0x1, b"2")]


def test_one_message_over_the_limit_is_a_slow_consumer_and_drops_the_queue() -> None:
    writer, sock = _writer(max_messages=3)
    decisions = [writer.enqueue(text_frame(b"%d" % i)) for i in range(4)]
    assert decisions == [None, None, None, closecodes.SLOW_CONSUMER]
    writer.send_last(close_frame(4009, "slow"))
    sock.blocked.set()
    gevent.sleep(0.01)
    # Nothing of the queue had begun on the wire: only the close frame goes.
    assert [_close_code(f) for f in _frames(bytes(sock.wire))] == [4009]


def test_bytes_over_the_limit_are_a_slow_consumer() -> None:
    writer, _ = _writer(max_bytes=1024)
    assert writer.enqueue(text_frame(b"x" * 500)) is None
    assert writer.enqueue(text_frame(b"x" * 500)) is None  # two frames of 504 bytes queued
    assert writer.enqueue(text_frame(b"x" * 14)) is None  # 16 more: 1024 is the limit
    assert writer.enqueue(text_frame(b"")) is closecodes.SLOW_CONSUMER


def test_the_last_frame_goes_out_whatever_the_limits() -> None:
    writer, sock = _writer(max_messages=1)
    assert writer.enqueue(text_frame(b"a")) is None
    writer.send_last(close_frame(1000, "bye"))  # past the limit of one message
    sock.blocked.set()
    gevent.sleep(0.01)
    assert [f[0] for f in _frames(bytes(sock.wire))] == [0x1, 0x8]


def test_a_connection_closes_4009_counts_a_slow_consumer_and_then_queues_nothing() -> None:
    settings = Settings(database_url="postgresql://x", jwt_secret=b"k" * 32,
                        queue_max_messages=1)
    sock = _Socket(first=0)
    conn = Connection(_Node(settings), sock, io.BytesIO(), "test")  # type: ignore[arg-type]
    conn.enqueue(text_frame(b"a"))
    conn.enqueue(text_frame(b"b"))  # over: 4009
    conn.enqueue(text_frame(b"c"))
    assert conn.closing is not None and conn.closing.code == 4009
    sock.blocked.set()
    gevent.sleep(0.01)
    assert [_close_code(f) for f in _frames(bytes(sock.wire))] == [4009]
    assert conn.node.counters["slow_consumer"] == 1
    assert conn.node.counters["close 4009"] == 1
