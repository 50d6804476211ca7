"""What the listener reads from relay's durable history (``relay.outbox``), and how.

Every statement the listener runs against the outbox is here, as a method of ``Outbox``, on
top of a ``query`` function that the database link provides (its one connection, from its
own greenlet, under its timeout). The functions called are relay's SQL's (sql/002):
``relay.settle``, ``relay.read_from``, ``relay.read_channel``, ``relay.heads``,
``relay.new_epoch``. Callers are the ``OutboxFollower`` (catch-up, gap fill, a row too big
for NOTIFY) and the listener's ``DurableHistory`` resume (a cursor its cache cannot serve).

Nothing here asks the database one question per channel where one statement can answer for
many: after a reconnect 100,000 users would otherwise be 200,000 round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

# Rows per page of a catch-up scan (relay.read_from); a page costs about 1 ms per 100 rows.
SCAN_PAGE = 1000
# Channels per relay.heads() call: one array parameter, one round trip.
HEADS_BATCH = 10_000

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
RowTuple = tuple[int, str, int, int, str]  # a Row's fields, as the database returns them


class Row(NamedTuple):
    """One message of the outbox: commit-ordered ``pos``, its channel's ``seq``, its random
    ``tag``, and the payload exactly as published (JSON text)."""

    pos: int
    channel: str
    seq: int
    tag: int
    payload: str


class Head(NamedTuple):
    """A channel's newest message: its ``seq``, ``tag`` and ``pos``."""

    seq: int
    tag: int
    pos: int


class Outbox:
    def __init__(self, query: Query) -> None:
        self._query = query

    def settle(self) -> None:
        """Number what REPEATABLE READ / SERIALIZABLE writers committed unnumbered, so that a
        scan sees it (cheap when there is nothing to settle)."""
        self._query("SELECT relay.settle()", ())

    def read_from(self, after: int, limit: int = SCAN_PAGE) -> list[Row]:
        """Up to ``limit`` messages after position ``after``, in commit order."""
        return list(map(Row._make, self.read_page(after, limit)))

    def read_page(self, after: int, limit: int = SCAN_PAGE) -> list[RowTuple]:
        """``read_from``'s rows as the database returns them: plain tuples (a catch-up's)."""
        return self._query("SELECT pos, channel, seq, tag, payload FROM relay.read_from(%s, %s)",
                           (after, limit))  # type: ignore[return-value]

    def row(self, pos: int) -> Row | None:
        """The message at ``pos``, if the outbox still has it."""
        rows = self.read_from(pos - 1, 1)
        return rows[0] if rows and rows[0].pos == pos else None

    def heads(self, channels: Iterable[str]) -> dict[str, Head]:
        """The newest message of each of ``channels`` that ever had one."""
        names = list(channels)
        heads: dict[str, Head] = {}
        for start in range(0, len(names), HEADS_BATCH):
            for channel, seq, tag, pos in self._query(
                    "SELECT channel, seq, tag, pos FROM relay.heads(%s)",
                    (names[start:start + HEADS_BATCH],)):
                heads[channel] = Head(seq, tag, pos)
        return heads

    def read_channels(self, wanted: Sequence[tuple[str, int, int]]) -> list[list[Row]]:
        """For each ``(channel, from_seq, limit)``: that channel's messages from ``from_seq`` on,
        at most ``limit``, in seq order — every channel in one round trip."""
        if not wanted:
            return []
        rows = self._query(
            "SELECT w.i, o.pos, o.seq, o.tag, o.payload "
            "FROM unnest(%s::text[], %s::bigint[], %s::int[]) WITH ORDINALITY AS w(c, s, n, i) "
            "CROSS JOIN LATERAL relay.read_channel(w.c, w.s, w.n) o ORDER BY w.i, o.seq",
            ([c for c, _, _ in wanted], [s for _, s, _ in wanted], [n for _, _, n in wanted]))
        found: list[list[Row]] = [[] for _ in wanted]
        for index, pos, seq, tag, payload in rows:
            found[index - 1].append(Row(pos, wanted[index - 1][0], seq, tag, payload))
        return found

    def new_epoch(self, reason: str) -> str:
        """Start a new history (every cursor of the old one is refused); all listeners hear it."""
        return str(self._query("SELECT relay.new_epoch(%s)", (reason,))[0][0])

    def cleanup(self, max_rows: int) -> int:
        """Delete up to ``max_rows`` messages past retention; -1 while another instance does."""
        return int(self._query("SELECT relay.cleanup(%s)", (max_rows,))[0][0])
