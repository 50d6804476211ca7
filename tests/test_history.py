"""Unit tests of the resume history: streams, caps by count, age and bytes."""

from __future__ import annotations

from relay.listener.history import History


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


# ----- eviction: what goes first, and that the byte count follows -----


def _record(history: History, channel: str, message: bytes, now: float = 0.0) -> int:
    _, seq = history.next_seq(channel)
    history.record(channel, seq, message, now=now)
    return seq


def _held(history: History, channel: str) -> list[bytes]:
    stream = history.get(channel)
    assert stream is not None
    return [entry[2] for entry in stream.entries]


def test_count_cap_of_one_channel_leaves_the_others_alone() -> None:
    history = History("ep", 2, 300, 1 << 20)
    for message in (b"a1", b"a2", b"a3"):
        _record(history, "a", message)
    _record(history, "b", b"b1")
    assert _held(history, "a") == [b"a2", b"a3"]
    assert _held(history, "b") == [b"b1"]
    assert history.total_bytes == 6


def test_byte_cap_takes_the_oldest_entry_of_each_channel_in_turn() -> None:
    history = History("ep", 100, 300, 100)
    for i in range(4):
        _record(history, "a", b"a%d" % i + b"." * 8)  # 10 bytes each
        _record(history, "b", b"b%d" % i + b"." * 8)
    _record(history, "c", b"c0" + b"." * 8)  # 90 bytes held
    _record(history, "a", b"A" * 25)  # 115: one pass takes a0, then b0, and is under again
    assert [m[:2] for m in _held(history, "a")] == [b"a1", b"a2", b"a3", b"AA"]
    assert [m[:2] for m in _held(history, "b")] == [b"b1", b"b2", b"b3"]
    assert [m[:2] for m in _held(history, "c")] == [b"c0"]
    assert history.total_bytes == 95


def test_a_message_bigger_than_the_byte_cap_is_not_kept() -> None:
    history = History("ep", 100, 300, 10)
    _record(history, "a", b"x" * 11)
    assert _held(history, "a") == []
    assert history.total_bytes == 0


def test_age_expiry_frees_the_bytes_it_held() -> None:
    history = History("ep", 100, 10, 1 << 20)
    _record(history, "a", b"old", now=0.0)
    _record(history, "a", b"new", now=8.0)
    history.expire(now=12.0)  # "old" is 12 s old, over the 10 s TTL; "new" is 4 s old
    assert _held(history, "a") == [b"new"]
    assert history.total_bytes == 3


def test_size_0_keeps_nothing_but_still_numbers_every_update() -> None:
    history = History("ep", 0, 300, 1 << 20)
    assert [_record(history, "a", b"m") for _ in range(3)] == [1, 2, 3]
    assert _held(history, "a") == []
    stream = history.get("a")
    assert stream is not None
    assert history.replay("a", f"{stream.stream}:1", now=1.0).reason == "history evicted"


def test_seq_goes_on_across_eviction_and_the_gap_is_a_resync() -> None:
    history = History("ep", 2, 300, 1 << 20)
    seqs = [_record(history, "a", b"m%d" % i) for i in range(5)]
    stream = history.get("a")
    assert stream is not None
    assert seqs == [1, 2, 3, 4, 5] and stream.cursor.endswith(":5")
    assert history.replay("a", f"{stream.stream}:3", now=1.0).messages == (b"m3", b"m4")
    evicted = history.replay("a", f"{stream.stream}:2", now=1.0)
    assert (evicted.resync, evicted.reason) == (True, "history evicted")


def test_resync_reasons_name_the_cause() -> None:
    history = History("ep", 10, 300, 1 << 20)
    stream = history.open("a")
    _record(history, "a", b"m")
    assert history.replay("a", "garbage").reason == "invalid cursor"
    assert history.replay("a", f"{stream.stream}:9").reason == "invalid cursor"
    assert history.replay("a", "other-1:1").reason == "history unavailable"
    assert history.replay("unknown", f"{stream.stream}:0").reason == "history unavailable"


def test_closing_a_channel_gives_its_bytes_back() -> None:
    history = History("ep", 10, 300, 1 << 20)
    _record(history, "a", b"12345")
    _record(history, "b", b"123")
    history.close("a")
    assert history.get("a") is None
    assert history.total_bytes == 3


# ----- planning a client's resume within its outbound queue's budget -----


def _two_channels() -> tuple[History, dict[str, str]]:
    history = History("ep", 100, 300, 1 << 20)
    starts = {}
    for channel in ("a", "b"):
        starts[channel] = history.open(channel).cursor
        for i in range(3):
            _record(history, channel, b"%s%d" % (channel.encode(), i), now=1.0)
    return history, starts


def test_resume_replays_each_channel_in_turn_from_its_cursor() -> None:
    history, starts = _two_channels()
    plan = history.resume(["a", "b"], starts, max_bytes=1000, max_messages=100, now=2.0)
    assert plan.replay == (b"a0", b"a1", b"a2", b"b0", b"b1", b"b2")
    assert plan.resync == () and plan.reason == ""


def test_resume_skips_channels_without_a_cursor() -> None:
    history, starts = _two_channels()
    plan = history.resume(["a", "b"], {"b": starts["b"]}, max_bytes=1000, max_messages=100,
                          now=2.0)
    assert plan.replay == (b"b0", b"b1", b"b2")


def test_a_channel_over_the_budget_is_resynced_as_too_far_behind() -> None:
    history, starts = _two_channels()
    # 6 bytes of messages and 3 of overhead per channel: "a" fits, then "b" no longer does.
    plan = history.resume(["a", "b"], starts, max_bytes=10, max_messages=100, overhead=1,
                          now=2.0)
    assert plan.replay == (b"a0", b"a1", b"a2")
    assert plan.resync == ("b",) and plan.reason == "too far behind"
    by_count = history.resume(["a", "b"], starts, max_bytes=1000, max_messages=2, now=2.0)
    assert by_count.replay == () and by_count.resync == ("a", "b")


def test_a_resync_names_the_first_channels_cause() -> None:
    history, starts = _two_channels()
    plan = history.resume(["a", "b"], {"a": "gone-1:1", "b": starts["b"]}, 1000, 100, now=2.0)
    assert plan.resync == ("a",) and plan.reason == "history unavailable"
    assert plan.replay == (b"b0", b"b1", b"b2")


def test_cursors_name_the_head_of_each_open_channel() -> None:
    history, starts = _two_channels()
    assert history.cursors(["a", "b", "unknown"]) == {
        "a": starts["a"][:-1] + "3", "b": starts["b"][:-1] + "3"}


# ----- at scale: silent channels cost next to nothing, housekeeping costs what it drops -----


def test_channels_opened_together_share_one_stream_and_start_at_zero() -> None:
    history = History("ep", 100, 300, 1 << 20)
    cursor = history.open_many(["a", "b", "c"])
    assert cursor.endswith(":0")
    assert history.cursors(["a", "b", "c", "d"]) == {"a": cursor, "b": cursor, "c": cursor}
    _record(history, "b", b"m")
    assert history.cursors(["a", "b"]) == {"a": cursor, "b": cursor[:-1] + "1"}
    history.open("a")  # opened again on its own: a stream of its own
    assert history.cursors(["a"])["a"] != cursor and history.open_channels == 3


def test_expiry_and_eviction_look_only_at_channels_holding_entries() -> None:
    history = History("ep", 100, 10, 1 << 20)
    history.open_many([f"silent{i}" for i in range(1000)])
    _record(history, "busy", b"old", now=0.0)
    _record(history, "busy", b"new", now=8.0)
    assert len(history._recent._aging) == 1  # one heap item for the one channel with entries
    history.expire(now=12.0)
    assert _held(history, "busy") == [b"new"] and history.total_bytes == 3
    history.expire(now=30.0)
    assert _held(history, "busy") == [] and history.total_bytes == 0
    assert history._recent._aging == [] and history._recent._entries == {}
