"""A raw RFC 6455 client for conformance tests: no WebSocket library to hide bugs."""

from __future__ import annotations

import base64
import os
import socket
import struct


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, length_form: str = "auto") -> bytes:
    """A client frame; ``length_form`` forces the 7/16/64-bit length encoding."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    form = length_form
    if form == "auto":
        form = "7" if n < 126 else "16" if n < 65536 else "64"
    mask_bit = 0x80 if mask else 0
    if form == "7":
        head = bytes((first, mask_bit | n))
    elif form == "16":
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def header_only(opcode: int, claimed_length: int) -> bytes:
    """A masked frame header claiming ``claimed_length`` bytes, with no payload after it."""
    return bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", claimed_length) + os.urandom(4)


class RawClient:
    """One WebSocket on a plain socket; ``pipelined`` bytes go in the handshake's own write."""

    def __init__(self, port: int, path: str, pipelined: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode() + pipelined)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "server closed during the handshake"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        b1, b2 = self._exact(2)
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exact(8))[0]
        return b1 & 0x0F, self._exact(n)

    def read_until(self, wanted: int, timeout: float = 10.0) -> bytes | None:
        """Payload of the next frame with opcode ``wanted`` (``None`` at EOF first)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == wanted:
                    return payload
        except (EOFError, OSError):
            return None

    def close_code(self, timeout: float = 10.0) -> int | None:
        payload = self.read_until(0x8, timeout)
        if payload is None:
            return None
        return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
