"""Unit tests of the listener↔worker wire: the frame layout byte for byte, and what each
decoder refuses (the fuzzing of the same functions is in test_fuzz_parsers.py)."""

from __future__ import annotations

import struct

import pytest

from relay import bus
from relay.worker.websocket import text_frame


def test_a_json_frame_is_length_kind_body_and_the_length_counts_kind_and_body() -> None:
    frame = bus.encode(bus.HELLO, {"pid": 7})
    assert frame == struct.pack("!IB", 10, ord("H")) + b'{"pid":7}'


def test_an_update_frame_carries_the_client_message_bytes_untouched_as_a_websocket_frame(
) -> None:
    message = b'{"type":"update","data":{"a": 1}}'  # not re-encoded: the space stays
    frame = bus.encode_update("user_Usage_1", message)
    # The text frame each client gets: FIN + text, unmasked, the 7-bit length.
    ws = bytes((0x81, len(message))) + message
    assert frame[:5] == struct.pack("!IB", 1 + 1 + 12 + len(ws), bus.UPDATE)
    assert frame[5:] == b"\x0cuser_Usage_1" + ws
    ((kind, body),) = bus.FrameReader().feed(frame)
    assert kind == bus.UPDATE
    assert bus.decode_update(body) == ("user_Usage_1", ws)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_the_websocket_header_of_an_update_is_rfc_6455s_for_every_length(size: int) -> None:
    message = b"x" * size
    _, ws = bus.decode_update(next(bus.FrameReader().feed(bus.encode_update("c", message)))[1])
    assert ws == text_frame(message)
    assert bus.update_message(ws) == message


def test_every_kind_has_its_own_byte() -> None:
    kinds = [bus.HELLO, bus.ATTACH, bus.DETACH, bus.STATS, bus.COUNTERS, bus.UPDATE,
             bus.ATTACHED, bus.RESYNC, bus.STATS_REPLY, bus.REVOKED]
    assert len(set(kinds)) == len(kinds) and set(kinds) == bus.KINDS


def test_frames_fed_one_byte_at_a_time_come_out_whole_and_in_order() -> None:
    wire = (bus.encode(bus.ATTACH, {"req": 1, "user": "u", "channels": ["c"]})
            + bus.encode_update("c", b"{}") + bus.encode(bus.DETACH, {"user": "u"}))
    reader = bus.FrameReader()
    frames = [frame for i in range(len(wire)) for frame in reader.feed(wire[i:i + 1])]
    assert [kind for kind, _ in frames] == [bus.ATTACH, bus.UPDATE, bus.DETACH]
    assert bus.decode_json(frames[2][1]) == {"user": "u"}


@pytest.mark.parametrize("body", [b"", b"\x05abc", b"\x02\xff\xfe{}"],
                         ids=["empty", "truncated channel", "channel not UTF-8"])
def test_a_malformed_update_body_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(bus.BusProtocolError):
        bus.decode_update(body)


@pytest.mark.parametrize("body", [b"[1]", b'"text"', b"not json", b"\xff"])
def test_a_json_body_must_be_an_object(body: bytes) -> None:
    with pytest.raises(bus.BusProtocolError):
        bus.decode_json(body)


def test_a_frame_over_the_limit_is_refused_before_its_body_arrives() -> None:
    reader = bus.FrameReader(max_frame=100)
    with pytest.raises(bus.BusProtocolError, match="length"):
        list(reader.feed(struct.pack("!IB", 101, bus.UPDATE)))


class Dispatched:
    """What ``FrameReader.dispatch`` handed on, in one list, in the order it did."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object, bytes]] = []

    def update(self, channel: str, frame: bytes) -> None:
        self.seen.append(("update", channel, frame))

    def frame(self, kind: int, body: bytes) -> None:
        self.seen.append(("frame", kind, body))


def _wire() -> tuple[bytes, list[tuple[str, object, bytes]]]:
    big = b'{"n":"' + b"y" * 300 + b'"}'  # a 16-bit length: the header spans 4 bytes
    parts = [(bus.encode_update("a", b"{}"), ("update", "a", text_frame(b"{}"))),
             (bus.encode(bus.ATTACHED, {"req": 1}), ("frame", bus.ATTACHED, b'{"req":1}')),
             (bus.encode_update("b\u00e9", big), ("update", "b\u00e9", text_frame(big))),
             (bus.encode(bus.RESYNC, {"r": 2}), ("frame", bus.RESYNC, b'{"r":2}')),
             (bus.encode_update("a", b"[]"), ("update", "a", text_frame(b"[]")))]
    return b"".join(p for p, _ in parts), [e for _, e in parts]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_dispatch_hands_on_updates_and_other_frames_in_stream_order_however_they_arrive(
        chunk: int) -> None:
    wire, expected = _wire()
    reader, out = bus.FrameReader(), Dispatched()
    for i in range(0, len(wire), chunk):
        reader.dispatch(wire[i:i + chunk], out.update, out.frame)
    assert out.seen == expected


def test_dispatch_and_feed_agree_on_every_frame() -> None:
    wire, _ = _wire()
    out = Dispatched()
    bus.FrameReader().dispatch(wire, out.update, out.frame)
    fed = [("update", *bus.decode_update(body)) if kind == bus.UPDATE else ("frame", kind, body)
           for kind, body in bus.FrameReader().feed(wire)]
    assert out.seen == fed


@pytest.mark.parametrize("wire", [
    struct.pack("!IB", 101, bus.UPDATE),  # over the limit, refused before its body
    struct.pack("!IB", 0, bus.UPDATE),
    struct.pack("!IB", 1, bus.UPDATE),  # an update without even its channel's length
    struct.pack("!IB", 5, bus.UPDATE) + b"\x09abc",  # the channel runs past the frame
    struct.pack("!IB", 5, bus.UPDATE) + b"\x02\xff\xfe{",  # not UTF-8
    struct.pack("!IB", 3, ord("Z")) + b"{}",  # no such kind
], ids=["too long", "zero length", "empty update", "truncated channel", "not UTF-8",
        "unknown kind"])
def test_dispatch_refuses_what_feed_refuses(wire: bytes) -> None:
    out = Dispatched()
    with pytest.raises(bus.BusProtocolError):
        bus.FrameReader(max_frame=100).dispatch(wire, out.update, out.frame)
    with pytest.raises(bus.BusProtocolError):
        for kind, body in bus.FrameReader(max_frame=100).feed(wire):
            if kind == bus.UPDATE:
                bus.decode_update(body)
    assert out.seen == []


def test_dispatch_keeps_its_place_when_a_handler_raises() -> None:
    """The link reconnects on a handler's bug; a reader kept after it must not replay or lose
    frames (the frame that raised counts as handled)."""
    wire, expected = _wire()
    reader, out = bus.FrameReader(), Dispatched()

    def fail_once(kind: int, body: bytes) -> None:
        out.frame(kind, body)
        if len(out.seen) == 2:
            raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        reader.dispatch(wire, out.update, fail_once)
    reader.dispatch(b"", out.update, out.frame)
    assert out.seen == expected
