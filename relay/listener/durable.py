"""The durable history as the listener holds it: where each open channel is in the
database's history, a cache of its recent updates, and resume planned against both.

Owned by the listener's ``Delivery`` while relay's outbox is on (``relay.hello(2)`` says
``"outbox": true``): the database numbers every message at commit, so a channel's ``seq``
and the message's random ``tag`` come from the outbox row, and a cursor
``"<epoch>:<seq>:<tag>"`` means the same on every instance and after any restart. The epoch
is the database's (``relay.meta``), not this listener's. This module takes the place of the
in-memory ``relay.listener.history.History``; its entries are a cache in front of
``relay.read_channel``, never the truth.

A channel's head (its newest message) must be known before a client is answered for it:
``open`` leaves it unknown, and the listener asks the database for the unknown heads of every
waiting attach in one ``relay.heads`` call (``learn``). A resume is planned from memory first
(``plan``); what the cache cannot serve becomes one bounded read per channel, all of them in
one statement (``Outbox.read_channels``), and ``finish`` turns the rows into the replay. A
resume never reads more rows than half the client's queue could hold: a channel further
behind is resynced ("too far behind") before anything is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from relay.listener.history import Resume
from relay.listener.outbox import Head, Row
from relay.listener.recent import MESSAGE, SEQ, TAG, RecentMessages
from relay.protocol import encode_update

UNAVAILABLE = "history unavailable"  # another epoch, a diverged history, a cursor of old
EXPIRED = "history expired"  # the rows after the cursor are past the outbox's retention
INVALID = "invalid cursor"  # not a cursor, or ahead of the database
TOO_FAR = "too far behind"  # more than half the client's queue: refetch rather than replay


def format_cursor(epoch: str, seq: int, tag: int) -> str:
    return f"{epoch}:{seq}:{tag:08x}"


def parse_cursor(cursor: object) -> tuple[str, int, int] | str:
    """``(epoch, seq, tag)`` of a durable cursor, or the reason to resync instead: a cursor of
    the in-memory history (``"<stream>:<seq>"``, from before the outbox) is of another
    history; anything else is not a cursor."""
    if not isinstance(cursor, str):
        return INVALID
    parts = cursor.split(":")
    if len(parts) == 2 and parts[1].isdigit():
        return UNAVAILABLE
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) != 8:
        return INVALID
    try:
        tag = int(parts[2], 16)
    except ValueError:
        return INVALID
    return parts[0], int(parts[1]), tag


@dataclass
class _Step:
    """One channel of a resume: its replay, its resync reason, or a read still to do."""

    channel: str
    messages: tuple[bytes, ...] = ()
    reason: str = ""
    read: tuple[str, int, int] | None = None  # (channel, from_seq, limit) for read_channels
    seq: int = 0  # the cursor's
    tag: int = 0
    head: int = 0  # the channel's seq when planned: nothing newer is replayed


@dataclass
class ResumePlan:
    """A resume planned from memory: ``reads`` are what the database must answer (in this
    order) before ``DurableHistory.finish`` can complete it."""

    steps: list[_Step]
    reads: list[tuple[str, int, int]]


class DurableHistory:
    def __init__(self, epoch: str, max_per_channel: int, ttl: float, max_bytes: int) -> None:
        self.epoch = epoch
        # Open channel → (seq, tag) of its newest message as delivered here; None until the
        # database said (``learn``). A channel that never had a message is at (0, 0).
        self._heads: dict[str, tuple[int, int] | None] = {}
        self._ttl = ttl
        self._recent = RecentMessages(max_per_channel, ttl, max_bytes)

    def keep_within(self, retention: object) -> None:
        """Cache nothing longer than the outbox keeps it (``retentionSeconds`` of hello(2)):
        a resume past retention is ``history expired`` here as on every other instance, even
        with RELAY_HISTORY_TTL longer."""
        if isinstance(retention, (int, float)) and not isinstance(retention, bool) \
                and retention > 0:
            self._recent.ttl = min(self._ttl, float(retention))

    @property
    def total_bytes(self) -> int:
        return self._recent.total_bytes

    @property
    def open_channels(self) -> int:
        return len(self._heads)

    def channels(self) -> list[str]:
        return list(self._heads)

    # ----- opening, closing, heads -----

    def open(self, channel: str) -> None:
        """A channel became wanted: its head is unknown until ``learn`` (or a delivery)."""
        self._heads.setdefault(channel, None)

    def close(self, channel: str) -> None:
        if channel in self._heads:
            del self._heads[channel]
            self._recent.drop(channel)

    def is_open(self, channel: str) -> bool:
        return channel in self._heads

    def unknown(self, channels: Iterable[str]) -> list[str]:
        """The open ones of ``channels`` whose head is not known yet (each once)."""
        heads = self._heads
        return list(dict.fromkeys(c for c in channels if c in heads and heads[c] is None))

    def known(self, channels: Iterable[str]) -> bool:
        heads = self._heads
        return all(heads.get(channel) is not None for channel in channels)

    def learn(self, channel: str, head: Head | None) -> None:
        """The database's head of an open channel whose head was unknown (``None``: it never
        had a message). Only call it once every message up to ``head.pos`` was delivered: a
        delivery since the channel opened is at least as new, and wins."""
        if channel not in self._heads or self._heads[channel] is not None:
            return
        self._heads[channel] = (head.seq, head.tag) if head is not None else (0, 0)

    def head(self, channel: str) -> tuple[int, int] | None:
        return self._heads.get(channel)

    # ----- recording -----

    def record(self, channel: str, seq: int, tag: int, message: bytes,
               now: float | None = None) -> None:
        """``message`` (seq, tag) was delivered: the channel's head moves to it."""
        self._heads[channel] = (seq, tag)
        self._recent.add(channel, seq, message, tag, now, runs=True)  # contiguous runs only

    def expire(self, now: float | None = None) -> None:
        self._recent.expire(now)

    # ----- cursors -----

    def cursor(self, channel: str) -> str | None:
        head = self._heads.get(channel)
        return None if head is None else format_cursor(self.epoch, head[0], head[1])

    def cursors(self, channels: Iterable[str]) -> dict[str, str]:
        """The current cursor of each open one of ``channels`` whose head is known."""
        heads = self._heads
        return {channel: format_cursor(self.epoch, head[0], head[1])
                for channel in channels if (head := heads.get(channel)) is not None}

    # ----- resuming -----

    def plan(self, channels: Iterable[str], cursors: Mapping[str, object],
             max_messages: int) -> ResumePlan:
        """A client's resume over ``channels`` from what this listener holds; every channel's
        head must be known. Channels absent from ``cursors`` start live."""
        steps: list[_Step] = []
        reads: list[tuple[str, int, int]] = []
        for channel in channels:
            if channel not in cursors:
                continue
            step = self._plan_channel(channel, cursors[channel], max_messages)
            if step.read is not None:
                reads.append(step.read)
            steps.append(step)
        return ResumePlan(steps, reads)

    def _plan_channel(self, channel: str, cursor: object, max_messages: int) -> _Step:
        parsed = parse_cursor(cursor)
        if isinstance(parsed, str):
            return _Step(channel, reason=parsed)
        epoch, seq, tag = parsed
        head = self._heads.get(channel)
        if epoch != self.epoch or head is None:
            return _Step(channel, reason=UNAVAILABLE)
        head_seq, head_tag = head
        if seq > head_seq:
            return _Step(channel, reason=INVALID)  # ahead of the database
        if seq == head_seq:
            # Up to date, if the cursor's message is the one this history has there.
            return _Step(channel) if seq == 0 or tag == head_tag else _Step(
                channel, reason=UNAVAILABLE)
        if head_seq - seq > max_messages:
            return _Step(channel, reason=TOO_FAR)  # decided before reading anything
        entries = self._recent.entries(channel)
        if entries:
            first = entries[0][SEQ]
            if seq == 0 and first == 1:
                return _Step(channel, messages=tuple(e[MESSAGE] for e in entries))
            if first <= seq:
                # The cache holds the cursor's own message (its tag proves the history is
                # the same) and every one after it, up to the head.
                if entries[seq - first][TAG] != tag:
                    return _Step(channel, reason=UNAVAILABLE)
                return _Step(channel, messages=tuple(e[MESSAGE] for e in entries[seq - first + 1:]))
        # The outbox: the cursor's own row (to check its tag), then the missed ones.
        start = max(seq, 1)
        return _Step(channel, read=(channel, start, head_seq - start + 1), seq=seq, tag=tag,
                     head=head_seq)

    def finish(self, plan: ResumePlan, rows: Sequence[list[Row]], max_bytes: int,
               max_messages: int, overhead: int = 0) -> Resume:
        """The resume, once ``rows`` answer ``plan.reads`` (in order), within the budget: the
        replay is bounded by ``max_bytes`` (each message counting ``overhead`` more) and
        ``max_messages`` over all channels; a channel that does not fit is resynced."""
        answers = iter(rows)
        replay: list[bytes] = []
        resync: list[str] = []
        reasons: list[str] = []
        for step in plan.steps:
            if step.read is not None:
                self._read_step(step, next(answers))
            if step.reason:
                resync.append(step.channel)
                reasons.append(step.reason)
                continue
            size = sum(len(message) + overhead for message in step.messages)
            if size > max_bytes or len(step.messages) > max_messages:
                resync.append(step.channel)
                reasons.append(TOO_FAR)
                continue
            max_bytes -= size
            max_messages -= len(step.messages)
            replay.extend(step.messages)
        return Resume(tuple(replay), tuple(resync), reasons[0] if reasons else "")

    def _read_step(self, step: _Step, rows: list[Row]) -> None:
        rows = [row for row in rows if row.seq <= step.head]  # newer ones come live
        if step.seq > 0:
            if not rows or rows[0].seq != step.seq:
                step.reason = EXPIRED  # the cursor's own message is gone: retention
                return
            if rows[0].tag != step.tag:
                step.reason = UNAVAILABLE  # same number, another message: diverged
                return
            rows = rows[1:]
        if [row.seq for row in rows] != list(range(step.seq + 1, step.head + 1)):
            step.reason = EXPIRED
            return
        step.messages = tuple(
            encode_update(row.channel, row.payload, self.epoch, row.seq, f"{row.tag:08x}")
            for row in rows)
