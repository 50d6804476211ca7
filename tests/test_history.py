"""Unit tests of the resume history: streams, caps by count, age and bytes."""

from __future__ import annotations

from relay.history import History


def _filled(count: int, **caps: int) -> History:
    history = History("ep", caps.get("size", 100), caps.get("ttl", 300), caps.get("bytes", 1 << 20))
    history.open("c")
    for i in range(count):
        _, seq = history.next_seq("c")
        history.record("c", seq, f"m{i + 1}".encode(), now=float(i))
    return history


def test_cursor_replays_what_follows_it() -> None:
    history = _filled(5)
    stream = history.get("c")
    assert stream is not None
    outcome = history.replay("c", f"{stream.stream}:2", now=5.0)
    assert not outcome.resync
    assert outcome.messages == (b"m3", b"m4", b"m5")


def test_cursor_at_the_head_replays_nothing() -> None:
    history = _filled(3)
    stream = history.get("c")
    assert stream is not None
    assert history.replay("c", stream.cursor, now=3.0).messages == ()


def test_other_stream_or_bad_cursor_is_resync() -> None:
    history = _filled(3)
    stream = history.get("c")
    assert stream is not None
    for cursor in ("other:1", f"{stream.stream}:9", f"{stream.stream}:-1", "garbage", 7, None):
        assert history.replay("c", cursor, now=3.0).resync
    assert history.replay("unknown", f"{stream.stream}:1").resync


def test_reopened_channel_gets_a_new_stream() -> None:
    history = _filled(3)
    old = history.get("c")
    assert old is not None
    old_cursor = old.cursor
    history.open("c")
    assert history.replay("c", old_cursor).resync


def test_count_cap_evicts_oldest() -> None:
    history = _filled(10, size=3)
    stream = history.get("c")
    assert stream is not None
    assert history.replay("c", f"{stream.stream}:7", now=10.0).messages == (b"m8", b"m9", b"m10")
    assert history.replay("c", f"{stream.stream}:5", now=10.0).resync


def test_age_cap_expires_entries() -> None:
    history = _filled(5, ttl=2)
    stream = history.get("c")
    assert stream is not None
    outcome = history.replay("c", f"{stream.stream}:1", now=5.5)  # entries at t=0..4
    assert outcome.resync


def test_byte_cap_over_all_channels() -> None:
    history = History("ep", 100, 300, 50)
    for channel in ("a", "b"):
        history.open(channel)
        for _ in range(10):
            _, seq = history.next_seq(channel)
            history.record(channel, seq, b"x" * 10)
    assert history.total_bytes <= 50
    history.close("a")
    history.close("b")
    assert history.total_bytes == 0
