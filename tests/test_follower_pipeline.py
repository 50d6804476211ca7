"""The follower's catch-up scan, pipelined: a full page is handed on while the next one is
read, pages stay whole and in commit order, and a row that needs a query of its own is handed
on from the scanning greenlet, never while another query runs. In process, with a scripted
outbox whose reads yield as the database link's real queries do."""

from __future__ import annotations

import gevent
import pytest

from relay.listener.follower import OutboxFollower
from relay.listener.outbox import SCAN_PAGE, Row

EPOCH = "5f1c0a9e72b4"


class YieldingOutbox:
    """relay.read_from over a list of rows; each read yields (a query waits for the
    database) and records how many rows were handed on when it was asked."""

    def __init__(self, count: int, handed: list[int]) -> None:
        self.rows = [Row(pos, f"c{pos % 7}", pos, pos * 7, "{}") for pos in range(1, count + 1)]
        self.handed = handed
        self.reads: list[tuple[int, int]] = []  # (after, rows handed on when asked)
        self.querying = False

    def settle(self) -> None:
        pass

    def read_from(self, after: int, limit: int = SCAN_PAGE) -> list[Row]:
        self.reads.append((after, len(self.handed)))
        self.querying = True
        try:
            gevent.sleep(0)  # the query is on the wire: other greenlets run
            return [row for row in self.rows if row.pos > after][:limit]
        finally:
            self.querying = False


def test_a_page_is_handed_on_while_the_next_one_is_read_and_every_row_once_in_order(
) -> None:
    handed: list[int] = []
    outbox = YieldingOutbox(3 * SCAN_PAGE + 10, handed)
    follower = OutboxFollower(outbox, lambda row: handed.append(row.pos))  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 0, "deletedUpto": 0})

    assert follower.catch_up() == 3 * SCAN_PAGE + 10

    assert handed == list(range(1, 3 * SCAN_PAGE + 11))
    assert follower.last_pos == 3 * SCAN_PAGE + 10 and follower.last_tag == handed[-1] * 7
    # Each page after the first is asked for before the previous one is handed on (it is
    # handed on during that read), and never before the one before it has been handed on.
    assert outbox.reads == [(0, 0), (SCAN_PAGE, 0), (2 * SCAN_PAGE, SCAN_PAGE),
                            (3 * SCAN_PAGE, 2 * SCAN_PAGE)]


def test_a_row_that_needs_a_query_is_handed_on_from_the_scan_not_during_a_read() -> None:
    handed: list[tuple[int, bool]] = []
    outbox = YieldingOutbox(2 * SCAN_PAGE + 5, [])
    gap_at = SCAN_PAGE // 2

    def deliver(row: Row) -> bool:
        if row.pos == gap_at and follower.meanwhile:
            return False  # the fill would query: not now
        assert not (row.pos == gap_at and outbox.querying)
        handed.append((row.pos, follower.meanwhile))
        return True

    follower = OutboxFollower(outbox, deliver)  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 0, "deletedUpto": 0})

    follower.catch_up()

    assert [pos for pos, _ in handed] == list(range(1, 2 * SCAN_PAGE + 6))
    # The first page up to the gap was handed on during the next read, the gap and the rest
    # of its page from the scanning greenlet once that read was over.
    assert all(meanwhile for pos, meanwhile in handed if pos < gap_at)
    assert not any(meanwhile for pos, meanwhile in handed if gap_at <= pos <= SCAN_PAGE)


def test_a_failing_read_still_hands_on_the_page_read_before_it() -> None:
    handed: list[int] = []
    outbox = YieldingOutbox(2 * SCAN_PAGE, handed)
    real_read = outbox.read_from

    def read_from(after: int, limit: int = SCAN_PAGE) -> list[Row]:
        if after >= SCAN_PAGE:
            gevent.sleep(0)
            raise TimeoutError("the database stopped answering")
        return real_read(after, limit)

    outbox.read_from = read_from  # type: ignore[method-assign]
    follower = OutboxFollower(outbox, lambda row: handed.append(row.pos))  # type: ignore[arg-type]
    follower.start({"epoch": EPOCH, "headPos": 0, "deletedUpto": 0})

    with pytest.raises(TimeoutError):
        follower.catch_up()

    assert handed == list(range(1, SCAN_PAGE + 1)) and follower.last_pos == SCAN_PAGE
