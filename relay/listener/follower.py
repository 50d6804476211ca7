"""The listener's place in relay's outbox: every numbered message, once, in commit order.

``OutboxFollower`` keeps the position (``pos``) of the last message it handed on and the
``tag`` of that message. A NOTIFY is only a wake-up: a frame at the next position is handed
on at once (a ``r`` frame, too big for NOTIFY, after reading its row); a frame further on
means a hole — a transaction that failed after it was numbered, a REPEATABLE READ commit,
or a notification that was never delivered — and the follower reads the outbox from its
position instead, in ONE scan for every channel (``catch_up``). The same scan brings it up
to date after the database connection comes back or a new listener starts, so nothing
committed meanwhile is missed and nothing is handed on twice (a frame at or before the
position is dropped).

Driven by the listener's ``Delivery`` and ``Router`` from the database link's greenlet (the
only one that may query), with an ``Outbox`` for the reads; what it hands on goes to a
``deliver`` callback, and a scan's pages to ``deliver_page`` as they come (rows as plain
tuples: no ``Row`` made for each of a burst's 50,000). ``check`` is the reconnect's
question: is our position still in the database's history (same epoch, not cleaned up under
us, not rewound)?
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.listener.outbox import SCAN_PAGE, Head, Outbox, Row, RowTuple

log = logging.getLogger("relay.listener")

EPOCH_CHANGED = "epoch changed"
EXPIRED = "history expired"
REWOUND = "history rewound"


class OutboxFollower:
    def __init__(self, outbox: Outbox, deliver: Callable[[Row], None],
                 deliver_page: Callable[[Sequence[RowTuple]], None] | None = None) -> None:
        self._outbox = outbox
        self._deliver = deliver
        self._deliver_page = deliver_page or self._deliver_each
        self.epoch = ""
        self.last_pos = 0
        self.last_tag: int | None = None  # the tag of the message at last_pos, if known
        self.scans = 0  # catch-ups (one scan each, however many pages)
        self.scanned = 0  # messages handed on by scans
        self.holes = 0  # frames that arrived past the next position
        self.duplicates = 0  # frames at or before the position

    def start(self, hello: Mapping[str, Any], at: int | None = None) -> None:
        """Follow from the database's present: a fresh listener, a new epoch, or history that
        expired under us; or from ``at``, where the outbox came on (the release's frame).
        What came before is served per cursor (``relay.read_channel``)."""
        self.epoch = str(hello.get("epoch") or "")
        # The newest visible message, or what cleanup removed when the outbox is empty: every
        # position up to there is settled (numbers are taken in commit order under one lock).
        self.last_pos = max(_int(hello.get("headPos")), _int(hello.get("deletedUpto")))
        if at is not None:
            self.last_pos = max(at, _int(hello.get("deletedUpto")))
        row = self._outbox.row(self.last_pos) if self.last_pos else None
        self.last_tag = row.tag if row is not None else None

    def check(self, hello: Mapping[str, Any]) -> str | None:
        """After a reconnect: ``None`` when our position still belongs to the database's
        history (then ``catch_up``), otherwise why not."""
        if hello.get("epoch") != self.epoch:
            return EPOCH_CHANGED
        if self.last_pos and _int(hello.get("deletedUpto")) > self.last_pos:
            return EXPIRED  # rows we never handed on were cleaned up: which channels, unknown
        if self.last_pos:
            # The highest number ever handed out survives cleanup but goes back with a
            # restore; the message at our position has another tag if the database was
            # replaced by a copy that diverged (design: what the fingerprint cannot see).
            if _int(hello.get("issuedPos")) < self.last_pos:
                return REWOUND
            row = self._outbox.row(self.last_pos)
            if row is not None and self.last_tag is not None and row.tag != self.last_tag:
                return REWOUND
        return None

    def on_message(self, pos: int, channel: str, seq: int, tag: int, body: str | None) -> None:
        """A numbered frame (``body`` None: too big for NOTIFY, read the row)."""
        if pos == self.last_pos + 1 and body is not None:  # nearly every frame
            self.last_pos, self.last_tag = pos, tag
            self._deliver(Row(pos, channel, seq, tag, body))
            return
        if pos <= self.last_pos:
            self.duplicates += 1  # a scan handed it on already
            return
        if pos != self.last_pos + 1:
            self.holes += 1
            self.catch_up()  # the scan hands this one on too, in its place
            return
        if body is None:
            row = self._outbox.row(pos)
            if row is None:
                self.catch_up()
                return
        else:
            row = Row(pos, channel, seq, tag, body)
        self._advance(row)

    def catch_up(self) -> int:
        """Hand on everything after our position, in commit order: ONE scan over the outbox
        for all channels (``relay.read_from``, page by page). Returns how many messages."""
        started = time.time()
        self._outbox.settle()  # REPEATABLE READ / SERIALIZABLE commits get their numbers
        self.scans += 1
        count = pages = 0
        first_read = 0.0
        deliver_page = self._deliver_page
        while True:
            # A page at a time: memory stays bounded for a transaction of 50,000 messages, and
            # the workers' writers send one page while the next is read (queries yield).
            rows = self._outbox.read_page(self.last_pos, SCAN_PAGE)
            pages += 1
            first_read = first_read or time.time()
            if rows:
                deliver_page(rows)
                # Nothing reads the position while a page is handed on (the database link's
                # greenlet alone does, and a gap's fill in the page is its own query); a page
                # that fails half-way is read again, its first half dropped as duplicates.
                self.last_pos, self.last_tag = rows[-1][0], rows[-1][3]
            count += len(rows)
            if len(rows) < SCAN_PAGE:
                self.scanned += count
                if pages > 1:
                    # Where a big transaction's time goes (bench scale's burst reads it).
                    log.info("outbox catch-up: %d messages in %d pages, first page read %.3f s "
                             "after the scan began, the last handed on %.3f s after it (scan "
                             "began at %.6f)", count, pages, first_read - started,
                             time.time() - started, started)
                return count

    def heads_here(self, channels: list[str]) -> dict[str, Head]:
        """The newest message of each of ``channels`` at or before our position: where a
        client that resyncs now starts, so that what comes after it (``catch_up``) is
        delivered to it, not skipped. A channel missing here had none. Where that message was
        cleaned up (retention), the channel's newest one: what lies between is skipped (the
        client's refetch has it)."""
        heads = self._outbox.heads(channels)
        ahead = {channel: head for channel, head in heads.items() if head.pos > self.last_pos}
        if not ahead:
            return heads
        # How many messages of each such channel lie after our position, up to its head.
        newer: Counter[str] = Counter()
        after, upto = self.last_pos, max(head.pos for head in ahead.values())
        while after < upto:
            rows = self._outbox.read_from(after, SCAN_PAGE)
            for row in rows:
                head = ahead.get(row.channel)
                if head is not None and row.pos <= head.pos:
                    newer[row.channel] += 1
            if len(rows) < SCAN_PAGE:
                break
            after = rows[-1].pos
        wanted = []
        for channel, head in ahead.items():
            seq = head.seq - newer[channel]
            if seq <= 0:
                del heads[channel]  # its first message came after our position
            else:
                wanted.append((channel, seq, 1))
        for (channel, seq, _), rows in zip(wanted, self._outbox.read_channels(wanted),
                                            strict=True):
            if rows and rows[0].seq == seq and rows[0].pos <= self.last_pos:
                heads[channel] = Head(seq, rows[0].tag, rows[0].pos)
        return heads

    def _deliver_each(self, rows: Sequence[RowTuple]) -> None:
        for row in rows:
            self._deliver(Row._make(row))

    def _advance(self, row: Row) -> None:
        self.last_pos, self.last_tag = row.pos, row.tag
        self._deliver(row)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
