"""Retention of relay's outbox: the listener deletes what is past it, in bounded batches.

Every ``CLEANUP_SECONDS`` while the outbox is on, the listener process calls
``relay.cleanup(CLEANUP_BATCH)`` on a short-lived connection of its own
(``application_name = relay-cleanup``), never on its LISTEN connection: a batch of 2,000 rows
costs the database 15-35 ms, which would be as much delivery delay there. The function
takes an advisory lock without waiting, so one instance at a time deletes and the others get
-1 at once; it never takes a lock a writer needs. It also records a sign of life: while no
relay runs, writers stop keeping messages after ``dormant_after`` (relay's SQL, §6 of the
design), so the outbox cannot grow for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import psycopg2

from relay.config import Settings
from relay.listener.resolve import libpq_address

log = logging.getLogger("relay.listener")

CLEANUP_SECONDS = 5.0
CLEANUP_BATCH = 2000
# Batches per round at most: a backlog (a relay that was down for an hour) goes over a few
# rounds instead of one long burst of deletes.
_MAX_BATCHES = 10


class OutboxCleaner:
    def __init__(self, settings: Settings, enabled: Callable[[], bool]) -> None:
        self.settings = settings
        self._enabled = enabled  # the outbox is on (asked before each round)
        self.deleted = 0
        self.rounds = 0
        self.failures = 0

    def run(self) -> None:
        """Clean for ever (its own greenlet)."""
        while True:
            gevent.sleep(CLEANUP_SECONDS)
            if not self._enabled():
                continue
            try:
                self.clean_once()
            except (Exception, gevent.Timeout) as exc:  # retried next round
                self.failures += 1
                lines = str(exc).strip().splitlines()
                log.warning("outbox cleanup failed (%s: %s); retrying in %.0fs",
                            type(exc).__name__, lines[0] if lines else "", CLEANUP_SECONDS)

    def clean_once(self) -> int:
        """One round: batches until one is short (or another instance holds the lock)."""
        timeout = self.settings.db_check_timeout + 5
        with gevent.Timeout(timeout):
            conn = psycopg2.connect(self.settings.database_url,
                                    **libpq_address(self.settings.database_url),
                                    application_name="relay-cleanup",
                                    connect_timeout=max(2, int(self.settings.db_check_timeout)))
        try:
            conn.autocommit = True
            deleted = 0
            for _ in range(_MAX_BATCHES):
                with gevent.Timeout(timeout), conn.cursor() as cur:
                    cur.execute("SELECT relay.cleanup(%s)", (CLEANUP_BATCH,))
                    count = cur.fetchone()[0]
                if count < 0:
                    break  # another instance is cleaning
                deleted += count
                if count < CLEANUP_BATCH:
                    break
            self.rounds += 1
            self.deleted += deleted
            return deleted
        finally:
            conn.close()
