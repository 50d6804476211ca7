"""The wire between the listener and the workers: framing and message kinds.

One Unix-domain stream socket per worker. Every frame is ``length:u32be kind:u8 body``,
where ``length`` counts ``kind`` and ``body``. Bodies are JSON objects except ``UPDATE``,
whose body is ``channel_len:u8 channel message`` so that the listener encodes a client
``update`` message once and the worker forwards those exact bytes. docs/architecture.md
describes each kind; this module is the only one that knows the layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

MAX_FRAME_BYTES = 16 << 20
_HEADER = struct.Struct("!IB")
_UPDATE_HEADER = struct.Struct("!IBB")  # the header, then the channel's length

# worker → listener
HELLO = ord("H")  # {"pid": int}
# {"req": int, "user": str, "channels": [str], "resume": {channel: cursor}, "iat": number}
ATTACH = ord("A")
DETACH = ord("D")  # {"user": str, "channels": [str]}
STATS = ord("S")  # {"req": int}
COUNTERS = ord("C")  # {"counters": {name: n}, "closes": {code: n}, "authFailures": {reason: n}}
# listener → worker
UPDATE = ord("U")  # channel + encoded client message
# {"req", "ok", "code"?, "reason"?, "cursors", "replay": [str], "resync": [str]}
ATTACHED = ord("R")
RESYNC = ord("Y")  # {"reason": str, "cursors": {channel: cursor}}
STATS_REPLY = ord("T")  # {"req": int, ...}
REVOKED = ord("K")  # {"revoked": {user: epoch seconds}}: tokens issued before are void

KINDS = frozenset((HELLO, ATTACH, DETACH, STATS, COUNTERS, UPDATE, ATTACHED, RESYNC, STATS_REPLY,
                   REVOKED))


class BusProtocolError(ValueError):
    """The peer sent something that is not a frame of this protocol: drop the peer."""


def encode(kind: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return _HEADER.pack(len(data) + 1, kind) + data


def encode_update(channel: str, message: bytes) -> bytes:
    name = channel.encode()
    # One pack for the header and the channel's length: once per routed notification.
    return _UPDATE_HEADER.pack(len(name) + len(message) + 2, UPDATE, len(name)) + name + message


def decode_update(body: bytes) -> tuple[str, bytes]:
    if not body:
        raise BusProtocolError("empty update")
    size = body[0]
    if len(body) < 1 + size:
        raise BusProtocolError("truncated update")
    try:
        channel = body[1 : 1 + size].decode()
    except UnicodeDecodeError:
        raise BusProtocolError("channel is not UTF-8") from None
    return channel, body[1 + size :]


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise BusProtocolError("body is not JSON") from None
    if not isinstance(value, dict):
        raise BusProtocolError("body is not a JSON object")
    return value


class FrameReader:
    """Incremental decoder: feed bytes as they arrive, iterate complete frames."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        buf = self._buffer
        offset = 0
        try:
            while len(buf) - offset >= _HEADER.size:
                length, kind = _HEADER.unpack_from(buf, offset)
                if length < 1 or length > self._max:
                    raise BusProtocolError(f"bad frame length {length}")
                if kind not in KINDS:
                    raise BusProtocolError(f"unknown frame kind {kind}")
                end = offset + 4 + length
                if len(buf) < end:
                    break
                body = bytes(buf[offset + 5 : end])
                offset = end
                yield kind, body
        finally:
            del buf[:offset]
