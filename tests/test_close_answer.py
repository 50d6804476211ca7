"""Reading a client's answer to our close without a frame reader (``close_frame_end``): what
a draining worker uses to finish thousands of connections a second in the hub (relay/worker/
connection.py, ``_took_close_answer``). Pure framing, tested on bytes; the drain itself is
tested end to end in tests/test_reliability_drain.py."""

from __future__ import annotations

import os

from relay.worker.websocket import OP_CLOSE, OP_PONG, OP_TEXT, close_frame_end


def frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask = 0x80 if masked else 0
    if size < 126:
        head = bytes([first, mask | size])
    elif size < 1 << 16:
        head = bytes([first, mask | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, mask | 127]) + size.to_bytes(8, "big")
    return head + (os.urandom(4) if masked else b"") + payload


CLOSE = frame(OP_CLOSE, (1012).to_bytes(2, "big"))


def test_a_close_frame_alone_ends_where_it_ends() -> None:
    assert close_frame_end(CLOSE) == len(CLOSE)
    assert close_frame_end(frame(OP_CLOSE, b"")) == 6


def test_frames_before_the_close_are_skipped_whatever_their_length() -> None:
    before = frame(OP_TEXT, b'{"type":"pong"}') + frame(OP_PONG, b"") + frame(OP_TEXT, b"x" * 300) \
        + frame(OP_TEXT, b"y" * 70_000, fin=False)
    assert close_frame_end(before + CLOSE) == len(before) + len(CLOSE)
    assert close_frame_end(before + CLOSE + frame(OP_TEXT, b"after")) == len(before) + len(CLOSE)


def test_no_whole_close_frame_is_none() -> None:
    assert close_frame_end(b"") is None
    assert close_frame_end(frame(OP_TEXT, b"hello")) is None
    for cut in range(1, len(CLOSE)):
        assert close_frame_end(CLOSE[:cut]) is None, cut
    long_text = frame(OP_TEXT, b"z" * 70_000)
    assert close_frame_end(long_text[:5000] + CLOSE) is None  # inside a frame still arriving
