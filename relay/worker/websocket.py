"""RFC 6455 framing after the handshake: the one hardened place that reads and writes frames.

gevent-websocket 0.10.1 performs the HTTP upgrade; everything after it goes through here
instead of its ``WebSocket`` object (trap 2), because that one sends close frames without a
code, has no maximum message size, accepts unmasked client frames and writes from whichever
greenlet calls it. This module:

* encodes server frames (unmasked) once, so the same bytes can go to many clients;
* reads client frames strictly: masked only, no reserved bits or opcodes, control frames
  unfragmented and ≤ 125 bytes, continuation rules, UTF-8 validated incrementally across
  fragments, and a message-size limit checked from the frame header *before* the payload
  is read;
* reports every frame but a close to an ``on_frame`` hook at its header, also before the
  payload is read: the connection's rate limit counts frames, not only whole messages, so
  a flood of pings or of empty fragments costs the client its connection instead of
  costing the worker its CPU.

It never writes: a ``FrameReader`` returns pings and closes as events, and the connection's
single writer sends the answers (trap 3).
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass

from relay import closecodes
from relay.closecodes import CloseCode

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")  # a frame header with a 16-bit length, packed at once


class ProtocolViolation(Exception):
    """The client broke RFC 6455 or a relay limit: close with ``code``."""

    def __init__(self, code: CloseCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ConnectionEnded(Exception):
    """The TCP stream ended (EOF or reset) without a close frame."""


@dataclass(frozen=True)
class Event:
    kind: str  # "text", "ping", "pong", "close"
    text: str = ""
    payload: bytes = b""
    close_code: int | None = None
    close_reason: str = ""


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A complete, unmasked server frame (FIN set)."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:  # most updates: one concatenation, not two
        return _HEAD16.pack(first, 126, length) + payload
    return bytes((first, 127)) + _U64.pack(length) + payload


def text_frame(message: bytes) -> bytes:
    return encode_frame(OP_TEXT, message)


def close_frame(code: int, reason: str = "") -> bytes:
    data = reason.encode()[:123]
    # Never cut a multi-byte character in half: the reason must stay valid UTF-8.
    data = data.decode("utf-8", "ignore").encode()
    return encode_frame(OP_CLOSE, _U16.pack(code) + data)


def is_pong_frame(data: bytes, pong: bytes) -> bool:
    """Whether ``data`` is exactly one client frame carrying the text ``pong``: FIN, no
    reserved bits, text, masked, a 7-bit length. What every client sends most (its answer to
    each heartbeat), recognised without a reader; anything else goes through ``FrameReader``,
    which checks every rule."""
    n = len(pong)
    return (len(data) == 6 + n and n < 126 and data[0] == 0x80 | OP_TEXT
            and data[1] == 0x80 | n and _unmask(data[6:], data[2:6]) == pong)


def close_frame_end(data: bytes) -> int | None:
    """Where the first close frame in ``data`` (frames back to back, from a frame boundary)
    ends; ``None`` if no whole one is there. Framing only: what a connection that has sent
    its own close needs to know of the client's answer (nothing in it is used)."""
    at, size = 0, len(data)
    while at + 2 <= size:
        length, head = data[at + 1] & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            if at + head > size:
                return None
            length = int.from_bytes(data[at + 2:at + head], "big")
        end = at + head + (4 if data[at + 1] & 0x80 else 0) + length
        if end > size:
            return None
        if data[at] & 0x0F == OP_CLOSE:
            return end
        at = end
    return None


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def is_valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameReader:
    """Reads client frames from a blocking ``read(n)`` (gevent-cooperative) and yields events."""

    def __init__(self, read: Callable[[int], bytes], max_message_bytes: int,
                 on_frame: Callable[[], None] | None = None) -> None:
        self._read = read
        self._max = max_message_bytes
        self._on_frame = on_frame  # may raise ProtocolViolation to refuse the frame
        # The text of a message's earlier fragments; None until a message comes in pieces (a
        # list per idle connection was one more object for every full collection to walk).
        self._fragments: list[str] | None = None
        self._fragment_opcode: int | None = None
        self._fragment_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    def _exact(self, n: int) -> bytes:
        # A reset can come in the middle of a frame as well as between frames: either way
        # the stream has ended, which is not an error of relay's.
        try:
            data = self._read(n)
            if len(data) == n:
                return data
            chunks = [data]
            got = len(data)
            while got < n:
                if not data:
                    raise ConnectionEnded("EOF")
                data = self._read(n - got)
                chunks.append(data)
                got += len(data)
        except OSError as exc:
            raise ConnectionEnded(str(exc)) from None
        return b"".join(chunks)

    @property
    def between_messages(self) -> bool:
        """No message is half-read: a new text frame may start here."""
        return self._fragment_opcode is None

    def next_event(self) -> Event:
        while True:
            event = self.next_frame()
            if event is not None:
                return event

    def next_frame(self) -> Event | None:
        """Read one frame: its event, or ``None`` for a fragment that does not end a message.

        Between two calls the reader is always at a frame boundary, which lets a connection
        give up its greenlet there (``Connection._read_buffered``)."""
        first, second = self._exact(2)
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        if first & 0x70:
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "reserved bits set")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES and (
            opcode != OP_CONTINUATION
        ):
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, f"reserved opcode {opcode}")
        if not second & 0x80:
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "unmasked client frame")
        length = second & 0x7F
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "control frame over 125 bytes")
        elif length == 126:
            length = _U16.unpack(self._exact(2))[0]
        elif length == 127:
            length = _U64.unpack(self._exact(8))[0]
            if length >> 63:
                raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "64-bit length with MSB set")
        if opcode == OP_CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "continuation without start")
        elif opcode in _DATA_OPCODES and self._fragment_opcode is not None:
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "message inside a fragmented one")
        if opcode == OP_BINARY:  # relay speaks JSON text only: refused before its payload
            raise ProtocolViolation(closecodes.UNSUPPORTED_DATA, "binary frame")
        if opcode == OP_TEXT or opcode == OP_CONTINUATION:
            # Checked from the header, before reading a byte of the payload (trap 2).
            if self._fragment_size + length > self._max:
                raise ProtocolViolation(
                    closecodes.MESSAGE_TOO_BIG, f"message over {self._max} bytes"
                )
        if self._on_frame is not None and opcode != OP_CLOSE:
            self._on_frame()
        mask = self._exact(4)
        payload = _unmask(self._exact(length), mask) if length else b""
        if opcode in _CONTROL_OPCODES:
            return self._control(opcode, payload)
        if opcode == OP_TEXT and fin:
            # A whole message in one frame (every pong): decoded at once, no decoder state.
            try:
                return Event("text", text=payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolViolation(closecodes.INVALID_PAYLOAD, "invalid UTF-8") from None
        if opcode == OP_TEXT:
            self._fragment_opcode = opcode
            self._decoder = codecs.getincrementaldecoder("utf-8")()
        assert self._decoder is not None
        self._fragment_size += length
        try:
            text = self._decoder.decode(payload, final=fin)
        except UnicodeDecodeError:
            raise ProtocolViolation(closecodes.INVALID_PAYLOAD, "invalid UTF-8") from None
        if not fin:
            if text:
                # Empty fragments add nothing to the size limit: kept, they would grow this
                # list by 8 bytes each, without bound (6 bytes on the wire per fragment).
                if self._fragments is None:
                    self._fragments = [text]
                else:
                    self._fragments.append(text)
            return None
        if self._fragments is not None:
            self._fragments.append(text)
            text = "".join(self._fragments)
            self._fragments = None
        self._fragment_opcode = None
        self._fragment_size = 0
        self._decoder = None
        return Event("text", text=text)

    def _control(self, opcode: int, payload: bytes) -> Event:
        if opcode == OP_PING:
            return Event("ping", payload=payload)
        if opcode == OP_PONG:
            return Event("pong", payload=payload)
        if not payload:
            return Event("close", close_code=None)
        if len(payload) == 1:
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, "close payload of 1 byte")
        code = _U16.unpack(payload[:2])[0]
        if not is_valid_close_code(code):
            raise ProtocolViolation(closecodes.PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(closecodes.INVALID_PAYLOAD, "close reason not UTF-8") from None
        return Event("close", close_code=code, close_reason=reason)
