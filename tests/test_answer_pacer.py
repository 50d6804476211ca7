"""When the listener answers waiting attaches with the durable history
(relay.listener.subscriptions.AnswerPacer): a lone attach at once, a storm's gathered into
one answer (one relay.heads, one read) per interval. In process, on gevent's loop."""

from __future__ import annotations

import gevent

from relay.listener.subscriptions import AnswerPacer


class Link:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def test_a_lone_attach_wakes_the_link_at_once() -> None:
    link = Link()
    pacer = AnswerPacer(link.wake, interval=0.05)
    pacer.want()
    assert link.wakes == 1


def test_attaches_soon_after_an_answer_are_gathered_into_one_wake() -> None:
    link = Link()
    pacer = AnswerPacer(link.wake, interval=0.05)
    pacer.want()
    pacer.answering()  # the link answers the first
    for _ in range(20):  # a storm's, one by one
        pacer.want()
    assert link.wakes == 1  # none yet: they wait for the interval's end
    gevent.sleep(0.1)
    assert link.wakes == 2  # one wake for the twenty


def test_after_a_quiet_interval_the_next_attach_is_answered_at_once() -> None:
    link = Link()
    pacer = AnswerPacer(link.wake, interval=0.02)
    pacer.want()
    pacer.answering()
    gevent.sleep(0.05)
    pacer.want()
    assert link.wakes == 2
