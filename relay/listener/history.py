"""Bounded recent history of each channel's updates, so a reconnecting client can resume.

Owned by the listener's ``Delivery``, which asks for the next ``seq`` of a channel and
records each update; ``Subscriptions`` opens a channel when it becomes wanted, closes it when
it is not any more, and plans a client's resume with it (``resume``); nothing else in the
listener looks inside. Each
open channel has a *stream*: a name that changes whenever the channel is opened again,
because anything sent while it was closed was dropped. A cursor ``"<stream>:<seq>"`` is
resumable only on the current stream and only while every later update is still held.
The entries themselves are kept by ``RecentMessages`` (capped per channel, by age, and by
total bytes over all channels).

This is the history of a listener whose database keeps none: relay's SQL without its outbox
(``outbox = off``, version 1, or none installed), or channels heard with per-user LISTEN.
With the outbox, ``relay.listener.durable.DurableHistory`` takes its place: the database
numbers the messages, and a cursor survives the listener.

Sized for 100,000 users with two channels each, most of them silent: an open channel that
never had an update costs one dict entry (its stream number, shared by the channels opened
together); its seq and its entries exist only once it has them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relay.listener.recent import MESSAGE, SEQ, Entry, RecentMessages

_stream_ids = itertools.count(1)


@dataclass
class ChannelStream:
    """A channel's position, as ``History.get`` shows it (a copy, for inspection)."""

    stream: str
    seq: int = 0
    entries: list[Entry] = field(default_factory=list)

    @property
    def cursor(self) -> str:
        return f"{self.stream}:{self.seq}"


@dataclass(frozen=True)
class Replay:
    """Outcome of a resume request for one channel: messages to send, or resync."""

    messages: tuple[bytes, ...]
    resync: bool
    reason: str = ""


@dataclass(frozen=True)
class Resume:
    """A client's resume over its channels: the messages to replay, in order, and the
    channels to resync instead (``reason``: the first channel's cause)."""

    replay: tuple[bytes, ...]
    resync: tuple[str, ...]
    reason: str = ""


class History:
    def __init__(self, epoch: str, max_per_channel: int, ttl: float, max_bytes: int) -> None:
        self.epoch = epoch
        self._recent = RecentMessages(max_per_channel, ttl, max_bytes)
        self._streams: dict[str, int] = {}  # open channel → its stream number
        self._seqs: dict[str, int] = {}  # channel → its last seq, once it has one

    @property
    def total_bytes(self) -> int:
        return self._recent.total_bytes

    # ----- opening and closing -----

    def open(self, channel: str) -> ChannelStream:
        """Start a new stream for a channel that just became wanted."""
        self.close(channel)
        self._streams[channel] = next(_stream_ids)
        return self._view(channel)

    def open_many(self, channels: Iterable[str]) -> str:
        """Open every one of ``channels`` on one new stream (a reconnect's): returns the cursor
        each of them has now, ``"<stream>:0"``."""
        number = next(_stream_ids)
        for channel in channels:
            self.close(channel)
            self._streams[channel] = number
        return f"{self._stream_name(number)}:0"

    def close(self, channel: str) -> None:
        if self._streams.pop(channel, None) is None:
            return
        self._seqs.pop(channel, None)
        self._recent.drop(channel)

    def get(self, channel: str) -> ChannelStream | None:
        return self._view(channel) if channel in self._streams else None

    def _view(self, channel: str) -> ChannelStream:
        return ChannelStream(self._stream_name(self._streams[channel]),
                             self._seqs.get(channel, 0), list(self._recent.entries(channel)))

    def _stream_name(self, number: int) -> str:
        return f"{self.epoch}-{number:x}"

    @property
    def open_channels(self) -> int:
        return len(self._streams)

    # ----- numbering and recording -----

    def next_seq(self, channel: str) -> tuple[str, int]:
        number = self._streams.get(channel)
        if number is None:
            self.open(channel)
            number = self._streams[channel]
        seq = self._seqs.get(channel, 0) + 1
        self._seqs[channel] = seq
        return self._stream_name(number), seq

    def record(self, channel: str, seq: int, message: bytes, now: float | None = None) -> None:
        self._recent.add(channel, seq, message, now=now)

    def expire(self, now: float | None = None) -> None:
        """Drop the entries older than the TTL; costs what it drops, not what is held."""
        self._recent.expire(now)

    # ----- resuming -----

    def replay(self, channel: str, cursor: object, now: float | None = None) -> Replay:
        """Messages after ``cursor`` on ``channel``, or a resync with the reason."""
        number = self._streams.get(channel)
        if not isinstance(cursor, str) or ":" not in cursor:
            return Replay((), True, "invalid cursor")
        stream_id, _, seq_text = cursor.rpartition(":")
        try:
            seq = int(seq_text)
        except ValueError:
            return Replay((), True, "invalid cursor")
        if number is None or self._stream_name(number) != stream_id:
            return Replay((), True, "history unavailable")
        head = self._seqs.get(channel, 0)
        if seq > head or seq < 0:
            return Replay((), True, "invalid cursor")
        if seq == head:
            return Replay((), False)
        self.expire(now)
        entries = self._recent.entries(channel)
        if not entries or entries[0][SEQ] > seq + 1:
            return Replay((), True, "history evicted")
        return Replay(tuple(e[MESSAGE] for e in entries if e[SEQ] > seq), False)

    def cursors(self, channels: Iterable[str]) -> dict[str, str]:
        """The current cursor of each open one of ``channels``."""
        return {channel: f"{self._stream_name(number)}:{self._seqs.get(channel, 0)}"
                for channel in channels if (number := self._streams.get(channel)) is not None}

    def resume(self, channels: Iterable[str], cursors: Mapping[str, object], max_bytes: int,
               max_messages: int, overhead: int = 0, now: float | None = None) -> Resume:
        """What a client that was at ``cursors`` missed on ``channels``, within a budget.

        The replay is queued to the client at once: more than its outbound queue could hold
        would close it 4009 and the same resume would overflow again, for ever. So the
        replay is bounded by ``max_bytes`` (each message counting ``overhead`` more, its
        frame header) and ``max_messages`` over all channels; a channel that does not fit is
        resynced ("too far behind"), as is one whose cursor the history cannot serve."""
        replay: list[bytes] = []
        resync: list[str] = []
        reasons: list[str] = []
        for channel in channels:
            if channel not in cursors:
                continue
            outcome = self.replay(channel, cursors[channel], now)
            size = sum(len(message) + overhead for message in outcome.messages)
            if outcome.resync:
                resync.append(channel)
                reasons.append(outcome.reason)
            elif size > max_bytes or len(outcome.messages) > max_messages:
                resync.append(channel)
                reasons.append("too far behind")
            else:
                max_bytes -= size
                max_messages -= len(outcome.messages)
                replay.extend(outcome.messages)
        return Resume(tuple(replay), tuple(resync), reasons[0] if reasons else "")
