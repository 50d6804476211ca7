"""Unit tests of the listener's channel reference counts: LISTEN on the first reference,
UNLISTEN a linger after the last, and a version that tells the database link to look again."""

from __future__ import annotations

from collections import Counter

from relay.listener.refcounts import ChannelRefcounts, release


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_reference_makes_a_channel_wanted_and_only_it_bumps_the_version() -> None:
    refs = ChannelRefcounts(linger=60)
    refs.add(["a", "b"])
    version = refs.version
    assert refs.wanted() == {"a", "b"} and version > 0
    refs.add(["a"])  # a second connection of a wanted channel: nothing to LISTEN
    assert refs.version == version
    assert (refs.count("a"), refs.count("b")) == (2, 1)


def test_the_last_reference_gone_lingers_then_the_channel_is_unwanted() -> None:
    clock = Clock()
    refs = ChannelRefcounts(linger=60, clock=clock)
    refs.add(["a"])
    version = refs.version
    refs.remove(["a"])
    assert refs.wanted() == {"a"} and refs.count("a") == 0 and refs.lingering == 1
    assert refs.version == version  # still wanted: the link has nothing to do
    clock.now += 59.9
    assert refs.expire() == [] and refs.wanted() == {"a"}
    clock.now += 0.1
    assert refs.expire() == ["a"]
    assert refs.wanted() == set() and refs.lingering == 0 and refs.version > version


def test_a_reference_during_the_linger_keeps_the_channel_without_a_new_listen() -> None:
    clock = Clock()
    refs = ChannelRefcounts(linger=60, clock=clock)
    refs.add(["a"])
    refs.remove(["a"])
    version = refs.version
    refs.add(["a"])  # the page reload came back
    assert refs.version == version and refs.lingering == 0
    clock.now += 120
    assert refs.expire() == [] and refs.wanted() == {"a"}


def test_without_linger_the_last_reference_gone_is_unwanted_at_once() -> None:
    refs = ChannelRefcounts(linger=0)
    refs.add(["a", "b"])
    version = refs.version
    refs.remove(["a"])
    assert refs.wanted() == {"b"} and refs.lingering == 0 and refs.version > version


def test_a_worker_gone_takes_all_its_references_at_once() -> None:
    clock = Clock()
    refs = ChannelRefcounts(linger=1, clock=clock)
    for _ in range(3):
        refs.add(["a"])
    refs.remove(["a"], count=2)
    assert refs.count("a") == 1 and refs.lingering == 0
    refs.remove(["a"], count=5)  # never below zero
    assert refs.count("a") == 0 and refs.lingering == 1


def test_removing_an_unknown_channel_changes_nothing() -> None:
    refs = ChannelRefcounts(linger=0)
    refs.add(["a"])
    version = refs.version
    refs.remove(["never-added"])
    assert refs.wanted() == {"a"} and refs.version == version and refs.lingering == 0


def test_release_says_when_the_last_of_a_key_is_gone() -> None:
    counts = Counter({"u": 2})
    assert release(counts, "u") is False and counts["u"] == 1
    assert release(counts, "u") is True and "u" not in counts
    assert release(counts, "u") is False and "u" not in counts


def test_changes_are_tracked_only_when_asked_and_taken_once() -> None:
    clock = [0.0]
    refs = ChannelRefcounts(1.0, clock=lambda: clock[0])
    assert refs.add(["a", "b"]) == ["a", "b"]
    assert refs.take_changes() == set()  # untracked: nothing remembered, nothing to grow
    refs.track_changes(True)
    assert refs.add(["b", "c"]) == ["c"]  # only a channel that opens is a change
    refs.remove(["a"])  # lingers: still open, not a change
    assert refs.take_changes() == {"c"} and refs.take_changes() == set()
    clock[0] = 2.0
    assert refs.expire() == ["a"]
    assert refs.take_changes() == {"a"} and not refs.is_open("a") and refs.is_open("c")


def test_expiry_stops_at_the_first_channel_still_lingering() -> None:
    clock = [0.0]
    refs = ChannelRefcounts(10.0, clock=lambda: clock[0])
    for i in range(5):
        refs.add([f"c{i}"])
    for i in range(5):
        clock[0] = float(i)
        refs.remove([f"c{i}"])  # c0 lingers until 10, c1 until 11, …
    refs.add(["c0"])  # taken back: no longer lingering
    refs.remove(["c0"])  # lingers again, now until 14: last in line
    clock[0] = 12.5
    assert refs.expire() == ["c1", "c2"]
    assert refs.lingering == 3 and refs.open_count == 3
