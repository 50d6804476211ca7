"""The durable history's pure logic, in process: cursors, resume plans against the cache and
the outbox's rows, and the follower's place in the outbox (a scripted outbox stands in for
relay's SQL functions; tests/test_durable_listener.py runs the real thing)."""

from __future__ import annotations

import json

from relay.listener.durable import (
    EXPIRED,
    INVALID,
    TOO_FAR,
    UNAVAILABLE,
    DurableHistory,
    format_cursor,
    parse_cursor,
)
from relay.listener.follower import EPOCH_CHANGED, REWOUND, OutboxFollower
from relay.listener.follower import EXPIRED as AWAY_TOO_LONG
from relay.listener.outbox import Head, Row
from relay.protocol import encode_update

EPOCH = "5f1c0a9e72b4"


def _message(channel: str, seq: int, tag: int) -> bytes:
    return encode_update(channel, json.dumps({"seq": seq}), EPOCH, seq, f"{tag:08x}")


def _history(head: int = 0, cached: range = range(0)) -> DurableHistory:
    history = DurableHistory(EPOCH, max_per_channel=100, ttl=300, max_bytes=1 << 20)
    history.open("c")
    history.learn("c", Head(head, 100 + head, head) if head else None)
    for seq in cached:
        history.record("c", seq, 100 + seq, _message("c", seq, 100 + seq), now=0.0)
    return history


def test_cursors_round_trip_and_old_ones_are_of_another_history() -> None:
    assert format_cursor(EPOCH, 17, 0x9F2C01AB) == f"{EPOCH}:17:9f2c01ab"
    assert parse_cursor(f"{EPOCH}:17:9f2c01ab") == (EPOCH, 17, 0x9F2C01AB)
    assert parse_cursor("a1b2c3-4:17") == UNAVAILABLE  # the in-memory history's: one resync
    for bad in (None, 17, "", "x", f"{EPOCH}:17:xyz", f"{EPOCH}:-1:00000000",
                f"{EPOCH}:1:0000000g", "a:b:c:d"):
        assert parse_cursor(bad) == INVALID, bad


def test_a_resume_the_cache_holds_reads_nothing() -> None:
    history = _history(cached=range(1, 6))
    plan = history.plan(["c"], {"c": format_cursor(EPOCH, 2, 102)}, max_messages=50)
    assert plan.reads == []
    resume = history.finish(plan, [], max_bytes=1 << 20, max_messages=50)
    assert [json.loads(m)["seq"] for m in resume.replay] == [3, 4, 5]
    assert resume.resync == ()


def test_a_resume_beyond_the_cache_reads_the_cursors_own_row_then_the_missed_ones() -> None:
    history = _history(head=5)  # nothing cached: another instance, or after a restart
    plan = history.plan(["c"], {"c": format_cursor(EPOCH, 2, 102)}, max_messages=50)
    assert plan.reads == [("c", 2, 4)]  # seq 2 (to check its tag) up to the head, 5
    rows = [Row(10 + s, "c", s, 100 + s, json.dumps({"seq": s})) for s in range(2, 7)]
    resume = history.finish(plan, [rows], max_bytes=1 << 20, max_messages=50)
    # Seq 6 committed after the head was learned: it comes live, not in the replay.
    assert [json.loads(m)["seq"] for m in resume.replay] == [3, 4, 5]
    assert json.loads(resume.replay[0])["cursor"] == f"{EPOCH}:3:00000067"


def test_rows_past_retention_or_of_another_history_resync_with_the_reason() -> None:
    history = _history(head=5)
    cursor = {"c": format_cursor(EPOCH, 2, 102)}
    gone = history.finish(history.plan(["c"], cursor, 50),
                          [[Row(14, "c", 4, 104, "{}"), Row(15, "c", 5, 105, "{}")]],
                          1 << 20, 50)
    assert gone.resync == ("c",) and gone.reason == EXPIRED and gone.replay == ()
    other = history.finish(history.plan(["c"], cursor, 50),
                           [[Row(12, "c", 2, 999, "{}"), Row(13, "c", 3, 103, "{}")]],
                           1 << 20, 50)
    assert other.reason == UNAVAILABLE  # same seq, another message: diverged
    elsewhere = history.finish(history.plan(["c"], {"c": "0badc0ffee00:2:00000066"}, 50), [],
                               1 << 20, 50)
    assert elsewhere.reason == UNAVAILABLE  # another epoch


def test_too_far_behind_is_decided_before_reading_anything() -> None:
    history = _history(head=1000)
    plan = history.plan(["c"], {"c": format_cursor(EPOCH, 1, 101)}, max_messages=50)
    assert plan.reads == []  # a hostile resume cannot make the listener read 1,000 rows
    resume = history.finish(plan, [], 1 << 20, 50)
    assert resume.resync == ("c",) and resume.reason == TOO_FAR


def test_a_cursor_ahead_of_the_database_or_at_its_head() -> None:
    history = _history(head=5)
    ahead = history.finish(history.plan(["c"], {"c": format_cursor(EPOCH, 9, 1)}, 50), [],
                           1 << 20, 50)
    assert ahead.reason == INVALID
    level = history.plan(["c"], {"c": format_cursor(EPOCH, 5, 105)}, 50)
    assert level.reads == [] and history.finish(level, [], 1 << 20, 50).resync == ()


class ScriptedOutbox:
    """relay.read_from over a list of rows, recording each call."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.reads: list[int] = []

    def settle(self) -> None:
        pass

    def read_from(self, after: int, limit: int = 1000) -> list[Row]:
        self.reads.append(after)
        return [row for row in self.rows if row.pos > after][:limit]

    def read_page(self, after: int, limit: int = 1000) -> list[Row]:
        return self.read_from(after, limit)  # a Row is the tuple the database gives

    def row(self, pos: int) -> Row | None:
        return next((row for row in self.rows if row.pos == pos), None)


def _rows(*positions: int) -> list[Row]:
    return [Row(pos, "c", pos, pos * 7, f'{{"p": {pos}}}') for pos in positions]


def test_the_follower_hands_on_in_order_and_fills_a_hole_with_one_scan() -> None:
    outbox = ScriptedOutbox(_rows(1, 2, 3, 4, 5))
    handed: list[int] = []
    follower = OutboxFollower(outbox, lambda row: handed.append(row.pos))  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 1, "deletedUpto": 0})
    follower.on_message(2, "c", 2, 14, '{"p": 2}')  # the next one: no read
    assert handed == [2] and outbox.reads == []
    follower.on_message(5, "c", 5, 35, '{"p": 5}')  # 3 and 4 never came: a hole
    assert handed == [2, 3, 4, 5] and follower.holes == 1 and follower.scans == 1
    follower.on_message(4, "c", 4, 28, '{"p": 4}')  # late: already handed on
    assert handed == [2, 3, 4, 5] and follower.duplicates == 1


def test_the_reconnect_check_finds_a_new_epoch_a_cleanup_under_us_and_a_rewind() -> None:
    outbox = ScriptedOutbox(_rows(1, 2, 3))
    follower = OutboxFollower(outbox, lambda row: None)  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 3, "deletedUpto": 0})
    same = {"epoch": EPOCH, "deletedUpto": 0, "issuedPos": 3}
    assert follower.check(same) is None
    assert follower.check({**same, "epoch": "another"}) == EPOCH_CHANGED
    assert follower.check({**same, "deletedUpto": 7, "issuedPos": 9}) == AWAY_TOO_LONG
    assert follower.check({**same, "issuedPos": 2}) == REWOUND  # numbers went back
    outbox.rows[2] = Row(3, "c", 3, 12345, "{}")  # a copy diverged: another message at 3
    assert follower.check(same) == REWOUND


class ScriptedChannels(ScriptedOutbox):
    """relay.heads and relay.read_channel over the same rows."""

    def heads(self, channels: list[str]) -> dict[str, Head]:
        heads: dict[str, Head] = {}
        for row in self.rows:
            if row.channel in channels:
                heads[row.channel] = Head(row.seq, row.tag, row.pos)
        return heads

    def read_channels(self, wanted: list[tuple[str, int, int]]) -> list[list[Row]]:
        return [[row for row in self.rows if row.channel == channel and row.seq >= seq][:limit]
                for channel, seq, limit in wanted]


def test_a_resync_starts_each_channel_at_the_followers_position_not_past_it() -> None:
    # pos: 1 a1, 2 b1, 3 a2 | our position | 4 b2, 5 a3, 6 c1, 7 d2 (d1 cleaned up)
    rows = [Row(1, "a", 1, 11, "{}"), Row(2, "b", 1, 21, "{}"), Row(3, "a", 2, 12, "{}"),
            Row(4, "b", 2, 22, "{}"), Row(5, "a", 3, 13, "{}"), Row(6, "c", 1, 31, "{}"),
            Row(7, "d", 2, 42, "{}")]
    follower = OutboxFollower(ScriptedChannels(rows), lambda row: None)  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 3, "deletedUpto": 0})
    heads = follower.heads_here(["a", "b", "c", "d", "e"])
    assert heads == {
        "a": Head(2, 12, 3),  # a3 comes after our position: delivered, not skipped
        "b": Head(1, 21, 2),
        # c had nothing before our position (its head is "none"); e never had anything
        "d": Head(2, 42, 7),  # its message before us is gone: the newest (a refetch has it)
    }


def test_the_cache_serves_nothing_older_than_the_outboxs_retention() -> None:
    history = DurableHistory(EPOCH, max_per_channel=100, ttl=300, max_bytes=1 << 20)
    history.keep_within(60)  # relay.hello(2)'s retentionSeconds, below RELAY_HISTORY_TTL
    history.open("c")
    history.learn("c", None)
    for seq in (1, 2, 3):
        history.record("c", seq, 100 + seq, _message("c", seq, 100 + seq), now=0.0)
    history.expire(now=61.0)
    # Past retention the cache has nothing: the outbox decides (history expired there).
    plan = history.plan(["c"], {"c": format_cursor(EPOCH, 1, 101)}, max_messages=50)
    assert plan.reads == [("c", 1, 3)]
    history.keep_within(None)  # an answer without it changes nothing
    history.keep_within(600)  # never longer than RELAY_HISTORY_TTL (300 s here)
    for seq in (4, 5):
        history.record("c", seq, 100 + seq, _message("c", seq, 100 + seq), now=100.0)
    history.expire(now=450.0)
    assert history.plan(["c"], {"c": format_cursor(EPOCH, 4, 104)}, max_messages=50).reads \
        == [("c", 4, 2)]
