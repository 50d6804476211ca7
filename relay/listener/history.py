"""Bounded recent history of each channel's updates, so a reconnecting client can resume.

Owned by the listener's ``Listener``, which asks it for the next ``seq`` of a channel,
records each update, and plans a client's resume with it (``resume``); nothing else in the
listener looks inside. Each channel has a *stream*: a name that changes whenever the
listener (re)starts LISTENing on it, because NOTIFY has no replay and anything sent while we
were not listening is lost. A cursor ``"<stream>:<seq>"`` is resumable only on the current
stream and only while every later update is still held. History is capped per channel
(count), by age, and by total bytes over all channels.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_stream_ids = itertools.count(1)


# One recorded update: (seq, monotonic time, message). A plain tuple of atomic values, which
# CPython's collector stops tracking: as dataclass instances, 100,000 entries made each of the
# listener's full collections take 80 ms in the middle of the bench's steady load.
_Entry = tuple[int, float, bytes]
_SEQ, _AT, _MESSAGE = 0, 1, 2


@dataclass
class ChannelStream:
    stream: str
    seq: int = 0
    # A list, not a deque: an empty deque costs 770 bytes against 64, every LISTENed channel
    # has a stream, and the oldest of at most RELAY_HISTORY_SIZE entries is cheap to pop.
    entries: list[_Entry] = field(default_factory=list)

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
        self.max_per_channel = max_per_channel
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._streams: dict[str, ChannelStream] = {}

    def open(self, channel: str) -> ChannelStream:
        """Start a new stream for a channel we just began LISTENing on."""
        self.close(channel)
        stream = ChannelStream(stream=f"{self.epoch}-{next(_stream_ids):x}")
        self._streams[channel] = stream
        return stream

    def close(self, channel: str) -> None:
        stream = self._streams.pop(channel, None)
        if stream is not None:
            self.total_bytes -= sum(len(e[_MESSAGE]) for e in stream.entries)

    def get(self, channel: str) -> ChannelStream | None:
        return self._streams.get(channel)

    def next_seq(self, channel: str) -> tuple[str, int]:
        stream = self._streams.get(channel) or self.open(channel)
        stream.seq += 1
        return stream.stream, stream.seq

    def record(self, channel: str, seq: int, message: bytes, now: float | None = None) -> None:
        if self.max_per_channel == 0 or self.max_bytes == 0:
            return
        stream = self._streams[channel]
        now = time.monotonic() if now is None else now
        stream.entries.append((seq, now, message))
        self.total_bytes += len(message)
        while len(stream.entries) > self.max_per_channel:
            self.total_bytes -= len(stream.entries.pop(0)[_MESSAGE])
        self._evict_over_budget()

    def _evict_over_budget(self) -> None:
        # Over the memory cap: take the oldest entry of each channel in turn. Not a global
        # LRU, but bounded work and no bookkeeping that could itself grow without bound.
        while self.total_bytes > self.max_bytes:
            evicted = False
            for stream in self._streams.values():
                if stream.entries:
                    self.total_bytes -= len(stream.entries.pop(0)[_MESSAGE])
                    evicted = True
                    if self.total_bytes <= self.max_bytes:
                        return
            if not evicted:
                return

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        limit = now - self.ttl
        for stream in self._streams.values():
            entries = stream.entries
            while entries and entries[0][_AT] < limit:
                self.total_bytes -= len(entries.pop(0)[_MESSAGE])

    def replay(self, channel: str, cursor: object, now: float | None = None) -> Replay:
        """Messages after ``cursor`` on ``channel``, or a resync with the reason."""
        stream = self._streams.get(channel)
        if not isinstance(cursor, str) or ":" not in cursor:
            return Replay((), True, "invalid cursor")
        stream_id, _, seq_text = cursor.rpartition(":")
        try:
            seq = int(seq_text)
        except ValueError:
            return Replay((), True, "invalid cursor")
        if stream is None or stream.stream != stream_id:
            return Replay((), True, "history unavailable")
        if seq > stream.seq or seq < 0:
            return Replay((), True, "invalid cursor")
        if seq == stream.seq:
            return Replay((), False)
        self.expire(now)
        entries = stream.entries
        if not entries or entries[0][_SEQ] > seq + 1:
            return Replay((), True, "history evicted")
        return Replay(tuple(e[_MESSAGE] for e in entries if e[_SEQ] > seq), False)

    def cursors(self, channels: Iterable[str]) -> dict[str, str]:
        """The current cursor of each channel that has a stream."""
        return {channel: stream.cursor for channel in channels
                if (stream := self._streams.get(channel)) is not None}

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
