"""What the load generators' clients say on the wire, and how they wait before reconnecting.

Pure functions, no I/O (bench.loadgen, which monkey-patches on import, uses them; the tests
check them against relay's frame reader and the JS client's backoff): client frames, the
server frame parser, the cursors a client keeps after ``connected``,
client/src/backoff.js's full-jitter delay, and the loopback addresses a load generator's
clients connect from.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def backoff_delay(attempt: int, base: float, cap: float, draw: float) -> float:
    """client/src/backoff.js: the ``attempt``-th wait (from 0) is uniform in
    [0, min(cap, base * 2^attempt)); ``draw`` is the uniform [0, 1) sample."""
    return draw * min(cap, base * 2 ** attempt)


def loopback_sources(first: str, count: int) -> list[str]:
    """``count`` loopback addresses from ``first``, 256 apart (127.0.0.10, 127.0.1.10, …):
    each load generator's own, never another's (those are 127.0.0.11, 127.0.0.12, …)."""
    start = ipaddress.ip_address(first)
    if not start.is_loopback:
        return [first]
    return [str(start + 256 * index) for index in range(count)]


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set), masked with a zero key: the payload goes out as it is."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def cursors_after(connected: dict[str, Any], resumed: dict[str, str]) -> dict[str, str]:
    """The cursors a client holds after ``connected``: as the JS client does, the server's
    heads for the channels it did not ask to resume; a resumed channel keeps its own cursor
    until its replay or a ``resync`` moves it."""
    cursors = dict(resumed)
    for channel, cursor in (connected.get("cursors") or {}).items():
        if channel not in resumed and isinstance(cursor, str):
            cursors[channel] = cursor
    return cursors


def server_frame(buf: bytearray) -> tuple[int, bytes, int] | None:
    """One unmasked server frame at the start of ``buf``: (opcode, payload, bytes used)."""
    if len(buf) < 2:
        return None
    length = buf[1] & 0x7F
    start = 2
    if length == 126:
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[2:4], "big")
        start = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length = int.from_bytes(buf[2:10], "big")
        start = 10
    end = start + length
    if len(buf) < end:
        return None
    return buf[0] & 0x0F, bytes(buf[start:end]), end
