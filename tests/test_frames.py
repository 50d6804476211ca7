"""Unit tests of the shared channel's frame parser (relay/listener/frames.py): the fixed
header, channels of any characters, bodies taken verbatim, and every malformed shape refused
rather than guessed at."""

from __future__ import annotations

import pytest

from relay.listener import frames


def test_a_message_frame_gives_its_channel_and_body_verbatim() -> None:
    frame = frames.parse('r1 n 0 0 9f2c01ab 20 user_Subscription_42 {"a": "b c"}')
    assert frame == frames.Frame("n", 0, 0, "9f2c01ab", "user_Subscription_42", '{"a": "b c"}')


@pytest.mark.parametrize("channel", ["with  two spaces ", "quote\"d 'x'", "üñí ©ødé", "a"])
def test_the_channel_length_counts_characters_so_any_character_may_be_in_it(
        channel: str) -> None:
    frame = frames.parse(f"r1 n 0 0 00000001 {len(channel)} {channel} [1, 2]")
    assert frame is not None and (frame.channel, frame.body) == (channel, "[1, 2]")


def test_announcements_have_an_empty_channel() -> None:
    assert frames.parse("r1 i 0 0 00000000 0  1") == frames.Frame("i", 0, 0, "00000000", "",
                                                                    "1")
    frame = frames.parse("r1 c 0 0 00000000 0  notify_channel")
    assert frame is not None and (frame.kind, frame.body) == ("c", "notify_channel")


def test_numbers_of_the_durable_history_are_read() -> None:
    frame = frames.parse("r1 m 1042 17 9f2c01ab 3 abc {}")
    assert frame is not None and (frame.kind, frame.pos, frame.seq) == ("m", 1042, 17)


@pytest.mark.parametrize("payload", [
    "", "hello", '{"json": "of somebody else"}', "r2 n 0 0 0 1 a {}", "r1 n 0 0 0 1",
    "r1 n 0 0 0 x a {}", "r1 n z 0 0 1 a {}", "r1 n 0 0 0 5 abc {}", "r1 n 0 0 0 2 abc {}",
    "r1 n 0 0 0 -1 a {}", "r1 nn 0 0 0 1 a {}", "R1 n 0 0 0 1 a {}",
])
def test_anything_not_of_that_shape_is_refused(payload: str) -> None:
    assert frames.parse(payload) is None


@pytest.mark.parametrize("payload", [
    'r1 m 7 3 0000abcd 20 user_Subscription_42 {"a": "b c"}',
    "r1 m 7 3 0000abcd 14 with  spaces  x",
    "r1 m 7 3 0000abcd 9 üñí ©ødé []",
    "r1 m 7 x 0000abcd 1 a {}",  # not a number
    "r1 m 7 3 0000abcd 5 a {}",  # the channel runs past the body
    "r1 m 7 3 0000abcd 1 ab {}",  # no space after the channel
    "r1 n 0 0 00000001 1 a {}",  # another kind
    "r1 m 7 3",  # too short
    "not relay's",
])
def test_the_numbered_fast_path_accepts_what_parse_accepts_as_kind_m(payload: str) -> None:
    frame = frames.parse(payload)
    expected = (None if frame is None or frame.kind != frames.NUMBERED else
                (frame.pos, frame.seq, frame.tag, frame.channel, frame.body))
    assert frames.numbered(payload) == expected
