"""The listener's database link hands notifications over in the order the handler can act on.

A real PostgreSQL and a real ``DatabaseLink`` in this process, driven by a scripted handler:
when a handler's callback reads the database (``read_info``, ``relay.hello(2)``) and
notifications arrive with the answer, they are handed over after that callback has returned,
never inside it. Inside, the handler would act on the newer state first and then on its own
older answer: on the v1 -> v2 upgrade the release of the outbox's hold (a kind c frame sent
by the listener's own ``relay.hello(2)``) was handled inside the handling of the install's
kind i, and the stale answer then looked like a rewound history (a new epoch, every client
resynced; tests/test_sql_upgrade.py's upgrade under running relays).
"""

from __future__ import annotations

from collections.abc import Sequence

import gevent
import pytest

from relay.config import Settings
from relay.listener.database import DatabaseLink
from relay.listener.handler import Notification
from relay.listener.queries import DatabaseInfo
from tests.support import execute, notify_directly, wait_for

pytestmark = pytest.mark.slow  # boots PostgreSQL

# relay.hello(2) stands-in: each call answers a new number and NOTIFYs it on relay's channel,
# as the real one does when it releases the outbox's hold (kind c, body outbox).
_HELLO = """
CREATE SCHEMA relay;
CREATE SEQUENCE relay.calls;
CREATE FUNCTION relay.hello() RETURNS json LANGUAGE sql AS $$ SELECT '{}'::json $$;
CREATE FUNCTION relay.hello(p integer) RETURNS json LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint := nextval('relay.calls');
BEGIN
    PERFORM pg_notify('relay', 'hello ' || n);
    RETURN json_build_object('call', n);
END
$fn$;
"""


class ScriptedHandler:
    """Records what the link reports; reads the database again on the notification "go"."""

    def __init__(self) -> None:
        self.link: DatabaseLink | None = None
        self.events: list[str] = []
        self._inside = False

    def shared_channels(self) -> tuple[str, ...]:
        return ("relay",)

    @property
    def wanted_version(self) -> int:
        return 0

    def wanted_channels(self) -> frozenset[str]:
        return frozenset()

    def wanted_changes(self) -> frozenset[str] | None:
        return frozenset()

    def is_wanted(self, channel: str) -> bool:
        return False

    def on_connected(self) -> None:
        pass

    def on_database(self, info: DatabaseInfo) -> None:
        self.events.append(f"database {(info.hello or {}).get('call')}")

    def on_synced(self) -> None:
        self.events.append("synced")

    def on_notifications(self, notes: Sequence[Notification]) -> None:
        for note in notes:
            self.on_notification(note.channel, note.payload)

    def on_notification(self, channel: str, payload: str) -> None:
        self.events.append(f"notified {payload}" + (" (inside a callback)" if self._inside else ""))
        if payload == "go":
            assert self.link is not None
            self._inside = True
            try:
                self.on_database(self.link.read_info())
            finally:
                self._inside = False

    def on_checked(self, queue_usage: float, installed: bool) -> None:
        pass

    def on_idle(self) -> None:
        pass

    def on_disconnected(self) -> None:
        self.events.append("disconnected")


def test_notifications_that_come_with_a_callbacks_answer_are_handed_over_after_it(
        empty_database: str) -> None:
    execute(empty_database, _HELLO)
    handler = ScriptedHandler()
    settings = Settings(database_url=empty_database, jwt_secret=b"k" * 32)
    link = DatabaseLink(settings, handler)
    handler.link = link
    runner = gevent.spawn(link.run)
    try:
        # Connected: hello 1 was read before the sync, its own notification comes after.
        wait_for(lambda: gevent.sleep(0.01) or "notified hello 1" in handler.events, 15, 0,
                 "the first connection")
        assert handler.events == ["database 1", "synced", "notified hello 1"]
        notify_directly(empty_database, "relay", "go")
        wait_for(lambda: gevent.sleep(0.01) or "database 2" in handler.events, 15, 0,
                 "the second hello")
        gevent.sleep(0.2)
        # The answer first, then what came with it: never the newer state before the older.
        assert handler.events[3:] == ["notified go", "database 2", "notified hello 2"]
    finally:
        runner.kill()
        link._drop()


class BatchRecorder(ScriptedHandler):
    """Records the size of each hand-over as well."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def on_notifications(self, notes: Sequence[Notification]) -> None:
        self.batches.append(len(notes))
        super().on_notifications(notes)


def test_what_arrives_together_is_handed_over_together_in_commit_order(
        empty_database: str) -> None:
    execute(empty_database, _HELLO)
    handler = BatchRecorder()
    link = DatabaseLink(Settings(database_url=empty_database, jwt_secret=b"k" * 32), handler)
    handler.link = link
    runner = gevent.spawn(link.run)
    try:
        wait_for(lambda: gevent.sleep(0.01) or "notified hello 1" in handler.events, 15, 0,
                 "the first connection")
        handler.batches.clear()
        # One transaction, 2,000 notifications: a burst's shape.
        execute(empty_database, "SELECT pg_notify('relay', 'n' || i) "
                                "FROM generate_series(1, 2000) AS i")
        wait_for(lambda: gevent.sleep(0.01) or "notified n2000" in handler.events, 15, 0,
                 "the burst")
        assert handler.events[3:] == [f"notified n{i}" for i in range(1, 2001)]
        assert sum(handler.batches) == 2000
        assert len(handler.batches) < 200  # per read, not per notification
    finally:
        runner.kill()
        link._drop()
