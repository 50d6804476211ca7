"""The fault tests' judge, judged: ``check_no_silent_gap`` rejects every kind of silent loss
it is meant to catch (a gap, a new stream without resync, a duplicate, a resync that came
too early) and accepts what relay promises."""

from __future__ import annotations

from typing import Any

import pytest

from tests.streams import NotifyWriter, check_no_silent_gap

CHANNEL = "user_Usage_x"


def _writer(count: int) -> NotifyWriter:
    writer = NotifyWriter("postgresql://unused", CHANNEL)
    for n in range(1, count + 1):
        writer.began[n] = 100.0 + n
        writer.committed.add(n)
    return writer


def _connected(stream: str = "a", seq: int = 0) -> tuple[float, dict[str, Any]]:
    return 100.0, {"type": "connected", "cursors": {CHANNEL: f"{stream}:{seq}"}}


def _update(at: float, n: int, stream: str, seq: int) -> tuple[float, dict[str, Any]]:
    return at, {"type": "update", "channel": CHANNEL, "cursor": f"{stream}:{seq}",
                "data": {"n": n}}


def _resync(at: float, stream: str, seq: int = 0) -> tuple[float, dict[str, Any]]:
    return at, {"type": "resync", "channels": [CHANNEL], "cursors": {CHANNEL: f"{stream}:{seq}"}}


def test_accepts_a_gap_that_a_later_resync_covers() -> None:
    received = [_connected(), _update(101.5, 1, "a", 1), _resync(104.5, "b"),
                _update(105.5, 4, "b", 1)]
    assert check_no_silent_gap(received, CHANNEL, _writer(4)) == {
        "delivered": 2, "excused": 2, "resyncs": 1}


@pytest.mark.parametrize("received, complaint", [
    ([_connected(), _update(101.5, 1, "a", 1), _update(103.5, 3, "a", 2)], "lost without"),
    ([_connected(), _update(101.5, 1, "a", 1), _update(102.5, 2, "b", 1)], "without a resync"),
    ([_connected(), _update(101.5, 1, "a", 1), _update(101.6, 1, "a", 2)], "after"),
    ([_connected(), _update(101.5, 1, "a", 1), _update(102.5, 2, "a", 3)], "seq"),
    # The resync reached the client before update 2 was even sent: it cannot excuse it.
    ([_connected(), _update(101.5, 1, "a", 1), _resync(101.6, "b"), _update(103.5, 3, "b", 1)],
     "lost without"),
])
def test_rejects_silent_loss(received: list[tuple[float, dict[str, Any]]],
                             complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_no_silent_gap(received, CHANNEL, _writer(3 if len(received) > 3 else 2))


def test_rejects_a_tail_lost_without_resync() -> None:
    received = [_connected(), _update(101.5, 1, "a", 1)]
    with pytest.raises(AssertionError, match="lost without a resync"):
        check_no_silent_gap(received, CHANNEL, _writer(2))
