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
