"""The wire between the listener and the workers: framing and message kinds.

One Unix-domain stream socket per worker. Every frame is ``length:u32be kind:u8 body``,
where ``length`` counts ``kind`` and ``body``. Bodies are JSON objects except ``UPDATE``,
whose body is ``channel_len:u8 channel ws_frame``: the listener encodes a client ``update``
message once, already as the WebSocket text frame that goes to each client, and the worker
sends those exact bytes (wrapping it there cost every worker a copy per update).
docs/architecture.md describes each kind; this module is the only one that knows the layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

MAX_FRAME_BYTES = 16 << 20
# The version of this wire, said in every worker's HELLO. A HUP reloads the workers' code but
# not the listener's: after an upgrade in place the two may differ, and a frame's meaning
# changed between versions (2: UPDATE carries the WebSocket frame). A HELLO without it is 1.
VERSION = 2
_HEADER = struct.Struct("!IB")
_UPDATE_HEADER = struct.Struct("!IBB")  # the header, then the channel's length
_WS_TEXT = 0x81  # a WebSocket frame's first byte: FIN, text (RFC 6455 5.2); servers never mask
_WS_LEN16 = struct.Struct("!BBH")
_WS_LEN64 = struct.Struct("!BBQ")

# worker → listener
HELLO = ord("H")  # {"pid": int, "bus": VERSION}
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


def ws_text_header(length: int) -> bytes:
    """The header of an unmasked WebSocket text frame (FIN set) of ``length`` bytes."""
    if length < 126:
        return bytes((_WS_TEXT, length))
    if length < 65536:
        return _WS_LEN16.pack(_WS_TEXT, 126, length)
    return _WS_LEN64.pack(_WS_TEXT, 127, length)


def encode_update(channel: str, message: bytes) -> bytes:
    """An ``UPDATE`` frame: ``message`` (the client ``update``) travels as the WebSocket text
    frame each client gets."""
    name = channel.encode()
    head = ws_text_header(len(message))
    # One pack for the header and the channel's length: once per routed notification.
    return b"".join((_UPDATE_HEADER.pack(len(name) + len(head) + len(message) + 2, UPDATE,
                                         len(name)), name, head, message))


def decode_update(body: bytes) -> tuple[str, bytes]:
    """An ``UPDATE`` body: the channel, and the WebSocket frame to send to its clients."""
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


def update_message(ws_frame: bytes) -> bytes:
    """The client message inside an ``UPDATE``'s WebSocket frame (tools and tests read it)."""
    size = ws_frame[1] & 0x7F
    return ws_frame[2 + (2 if size == 126 else 8 if size == 127 else 0):]


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
        self._rest = b""  # ``dispatch``'s: the start of a frame not complete yet

    def dispatch(self, data: bytes, on_update: Callable[[str, bytes], None],
                 on_frame: Callable[[int, bytes], None]) -> None:
        """Feed ``data`` and handle every complete frame in stream order: an ``UPDATE``
        with ``on_update(channel, ws_frame)``, any other with ``on_frame(kind, body)``.

        The worker's read loop (``feed`` for everything else): per update, one slice for
        the channel and one for the frame, no generator and no copy of the body (a worker
        reads one frame per delivery; bench sweep). Never mixed with ``feed`` on one reader.
        """
        buf = self._rest + data if self._rest else data
        size = len(buf)
        offset = 0
        unpack_from, header, max_frame = _HEADER.unpack_from, _HEADER.size, self._max
        try:
            while size - offset >= header:
                length, kind = unpack_from(buf, offset)
                end = offset + 4 + length
                if kind == UPDATE and 2 <= length <= max_frame:
                    if end > size:
                        break
                    start = offset + 6
                    frame_at = start + buf[offset + 5]
                    if frame_at > end:
                        raise BusProtocolError("truncated update")
                    try:
                        channel = buf[start:frame_at].decode()
                    except UnicodeDecodeError:
                        raise BusProtocolError("channel is not UTF-8") from None
                    offset = end
                    on_update(channel, buf[frame_at:end])
                    continue
                if length < 1 or length > max_frame:
                    raise BusProtocolError(f"bad frame length {length}")
                if kind not in KINDS:
                    raise BusProtocolError(f"unknown frame kind {kind}")
                if end > size:
                    break
                body = buf[offset + 5 : end]
                offset = end
                if kind == UPDATE:
                    decode_update(body)  # too short to be one: raises
                on_frame(kind, body)
        finally:
            self._rest = buf[offset:]

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
