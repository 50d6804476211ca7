"""Unit tests of the listener↔worker wire: the frame layout byte for byte, and what each
decoder refuses (the fuzzing of the same functions is in test_fuzz_parsers.py)."""

from __future__ import annotations

import struct

import pytest

from relay import bus


def test_a_json_frame_is_length_kind_body_and_the_length_counts_kind_and_body() -> None:
    frame = bus.encode(bus.HELLO, {"pid": 7})
    assert frame == struct.pack("!IB", 10, ord("H")) + b'{"pid":7}'


def test_an_update_frame_carries_the_client_message_bytes_untouched() -> None:
    message = b'{"type":"update","data":{"a": 1}}'  # not re-encoded: the space stays
    frame = bus.encode_update("user_Usage_1", message)
    assert frame[:5] == struct.pack("!IB", 1 + 1 + 12 + len(message), bus.UPDATE)
    assert frame[5:] == b"\x0cuser_Usage_1" + message
    ((kind, body),) = bus.FrameReader().feed(frame)
    assert kind == bus.UPDATE
    assert bus.decode_update(body) == ("user_Usage_1", message)


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
