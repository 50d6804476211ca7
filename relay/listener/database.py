"""The listener's one PostgreSQL connection: LISTEN what is wanted, report what arrives.

``DatabaseLink`` owns the connection and the greenlet that uses it: autocommit (trap 5),
libpq keepalives and a periodic health query under a timeout (trap 6), a self-check that
LISTEN delivers at all (trap 9), every channel name quoted (trap 4), and reconnect for ever
with capped, jittered backoff, LISTENing every wanted channel again before it reports the
connection usable. It knows nothing of workers or clients: it asks a ``DatabaseHandler``
which channels are wanted and reports to it what happens, as centrifuge's broker reports to
its BrokerEventHandler (``relay.listener.handler``). The listener's ``Router`` is that
handler.

Two kinds of channel are LISTENed: relay's shared channel (``RELAY_NOTIFY_CHANNEL``, first,
on every connection) and, while per-user LISTEN is on, the users' own channels. PostgreSQL up
to 18 checks every notification in the database against a session's LISTENed channels one
by one (trap 11), so after the first full LISTEN the link only ever looks at the channels
that changed. What the database is (its version, whether relay's SQL is installed, what
``relay.hello(2)`` says) is read on connect and on request (``refresh``); the periodic health
query also samples ``pg_notification_queue_usage()``.

A replica (``pg_is_in_recovery()``) is refused: NOTIFY is never delivered there and nothing
can be written. The link says so once, keeps the reason for ``/health`` (``refused``) and
retries with its backoff, so a failover's promotion is picked up.

The handler may read the database itself, but only from its callbacks (they all run in the
link's greenlet): ``query`` runs a statement on the connection and leaves the notifications
that arrive with its answer for the link to hand over after the callback returns.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import gevent
import gevent.select
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from relay.config import Settings
from relay.listener.handler import DatabaseHandler, Notification
from relay.listener.queries import (
    INSTALLED,
    DatabaseInfo,
    batches,
    describe,
    read_info,
    statements,
)
from relay.listener.readable import Readable
from relay.listener.resolve import libpq_address

log = logging.getLogger("relay.listener")

# The least a database connection must have lived for its loss to reset the reconnect
# backoff (see DatabaseLink.run).
_HEALTHY_SECONDS = 5.0


class ReplicaRefused(RuntimeError):
    """The database is a replica (in recovery): relay needs the primary."""


class DatabaseLink:
    """Owns the PostgreSQL connection. Only its own greenlet (``run``) ever touches it."""

    def __init__(self, settings: Settings, handler: DatabaseHandler) -> None:
        self.settings = settings
        self._handler = handler
        self._conn: psycopg2.extensions.connection | None = None
        self._draining = False  # handing notifications over: never re-entered
        self._listening: set[str] = set()
        self._connected = False  # connected, and every wanted channel LISTENed once
        self.reconnects = 0
        self.refused = ""  # why the database is refused (a replica), for /health
        self._synced_version = -1  # the handler's wanted_version at the last sync
        self._refresh_due = False  # read DatabaseInfo again (relay's SQL changed)
        self.server_version = 0
        # While re-LISTENing after a (re)connect, notifications wait here: they go out after
        # the RESYNC, so that a client never sees an update of the new epoch before it.
        self._held: list[Notification] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def connected(self) -> bool:
        """Connected and LISTENing: what it reports is complete from here on."""
        return self._connected

    @property
    def listening(self) -> AbstractSet[str]:
        """The channels LISTENed on the current connection (a read-only view)."""
        return self._listening

    def wake(self) -> None:
        """Look at the handler's wanted channels again soon (any greenlet may call this)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def refresh(self) -> None:
        """Read what the database is again soon, and report it (``on_database``)."""
        self._refresh_due = True
        self.wake()

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``statement`` on the connection and return its rows. Only from the handler's
        callbacks (the link's greenlet); bounded by ``RELAY_DB_CHECK_TIMEOUT``. Notifications
        that arrive with the answer are handed over after the callback, in order."""
        assert self._conn is not None
        with gevent.Timeout(self.settings.db_check_timeout), self._conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

    def read_info(self) -> DatabaseInfo:
        """What the database is, now (from the handler's callbacks only)."""
        return self._read_info()

    def run(self) -> None:
        """Connect, serve, and on any failure connect again, for ever (its own greenlet)."""
        delay = 0.0
        while True:
            if delay:
                gevent.sleep(delay)
            try:
                self._connect()
            except (Exception, gevent.Timeout) as exc:  # any failure means: retry later
                delay = next_backoff(delay, self.settings.reconnect_max_delay)
                log.warning("database connect failed (%s); retrying in %.1fs",
                            describe(exc), delay)
                continue
            connected_at = time.monotonic()
            self._handler.on_connected()
            try:
                self._serve()
            except ReplicaRefused as exc:
                if not self.refused:  # one line per episode, not one per retry
                    log.error("%s", exc)
                self.refused = str(exc)
            except (Exception, gevent.Timeout) as exc:  # Timeout is a BaseException
                log.error("database connection lost: %s", describe(exc))
            self._drop()
            self.reconnects += 1
            self._handler.on_disconnected()
            # Only the loss of a connection that stayed up is retried at once. One that the
            # server closes, or whose LISTEN fails, right after connecting keeps backing off:
            # it used to be retried about ten times a second, for ever. "Stayed up" is long
            # enough for its first health query to have been answered, and a few seconds.
            healthy_for = max(_HEALTHY_SECONDS,
                              self.settings.db_check_interval + self.settings.db_check_timeout)
            if time.monotonic() - connected_at >= healthy_for:
                delay = 0.0
            delay = next_backoff(delay, self.settings.reconnect_max_delay)

    def _connect(self) -> None:
        with gevent.Timeout(self.settings.db_check_timeout + 5):
            address = libpq_address(self.settings.database_url)  # DNS off the loop
            conn = psycopg2.connect(
                self.settings.database_url,
                **address,
                application_name="relay-listener",
                connect_timeout=max(2, int(self.settings.db_check_timeout)),
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=2,
                tcp_user_timeout=int(self.settings.db_check_timeout * 1000),
            )
        conn.autocommit = True  # trap 5: a LISTEN inside a transaction receives nothing
        self._conn = conn
        self._listening = set()
        log.info("database connected (backend pid %s)", conn.get_backend_pid())

    def _drop(self) -> None:
        self._connected = False
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._conn = None
        self._listening = set()

    def _execute(self, statement: sql.Composable | str, drain: bool = True) -> None:
        assert self._conn is not None
        with gevent.Timeout(self.settings.db_check_timeout):
            with self._conn.cursor() as cur:
                cur.execute(statement)
        if drain:
            self._drain()  # trap 5: notifications arrive with any query result

    def _drain(self) -> None:
        """Hand over what has arrived, in order. A handler's callback that makes the link
        drain again (its own query's answer brought notifications) leaves them to the loop
        below: handed over inside, they would overtake the callback still acting on an older
        state."""
        assert self._conn is not None
        if self._draining:
            return
        self._draining = True
        try:
            notifies = self._conn.notifies
            while notifies:
                # The whole list at once: a query's answer can bring tens of thousands (the
                # backend sends its backlog before ReadyForQuery), and pop(0) of each was
                # quadratic (0.9 s of memmove for 50,000). What a callback's query brings is
                # appended to the same list and handed over on the next turn, after this batch.
                batch = notifies[:]
                del notifies[:]
                listening = self._listening
                notes = [note for note in batch if note.channel in listening]
                if self._held is not None:
                    self._held.extend(notes)
                elif notes:
                    self._handler.on_notifications(notes)
        finally:
            self._draining = False

    def _sync_channels(self, full: bool = False) -> None:
        """LISTEN what is wanted and UNLISTEN what is not; after a (re)connect or when the
        handler says so every channel is compared, otherwise only those that changed."""
        handler = self._handler
        self._synced_version = handler.wanted_version
        changes = handler.wanted_changes()
        shared = handler.shared_channels()
        if full or changes is None:
            wanted = set(handler.wanted_channels()).union(shared)
            gone = sorted(self._listening - wanted)
            new = sorted(wanted - self._listening)
        else:
            gone = sorted(c for c in changes
                          if c in self._listening and c not in shared and not handler.is_wanted(c))
            new = ([c for c in shared if c not in self._listening]
                   + sorted(c for c in changes
                            if c not in self._listening and handler.is_wanted(c)))
        # Out of `listening` before the UNLISTEN is sent: an attach that wants one of them
        # again meanwhile waits for the next sync (which LISTENs it afresh) instead of being
        # answered on a channel about to go deaf.
        self._listening.difference_update(gone)
        for batch in batches(gone):
            self._execute(statements("UNLISTEN", batch))
        for batch in batches(new):
            self._execute(statements("LISTEN", batch), drain=False)
            self._listening.update(batch)
            self._drain()  # what arrived with the answer was committed after the LISTEN

    def _read_info(self) -> DatabaseInfo:
        assert self._conn is not None
        with gevent.Timeout(self.settings.db_check_timeout):
            info = read_info(self._conn, self.settings.max_token_lifetime)
        # No _drain() here: what arrived with these answers was committed after (or as) they
        # were read, so it is handed over after the handler has acted on them (on_database).
        # Handed over first, a newer state would be acted on, then overwritten by this older
        # one: the upgrade switch (the kind c that hello(2) itself sends) saw a position the
        # stale answer did not know of, and took it for a rewind.
        self.server_version = info.server_version
        return info

    def _refuse_a_replica(self) -> None:
        assert self._conn is not None
        with gevent.Timeout(self.settings.db_check_timeout), self._conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            replica = cur.fetchone()[0]
        if replica:
            raise ReplicaRefused(
                "the database is a replica (in recovery): NOTIFY is never delivered there and "
                "nothing can be written; point DATABASE_URL at the primary (retrying, in case "
                "this one is promoted)")
        if self.refused:
            log.info("the database is no longer refused: it is a primary")
        self.refused = ""

    def _check_listen_works(self) -> None:
        """A NOTIFY to ourselves must come back: through a transaction-mode pooler it never
        does (trap 9), and relay would then look healthy while delivering nothing."""
        assert self._conn is not None
        channel = f"relay_selfcheck_{os.getpid()}"
        self._execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        with gevent.Timeout(self.settings.db_check_timeout), self._conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, 'check')", (channel,))
        deadline = time.monotonic() + self.settings.db_check_timeout
        while not any(n.channel == channel for n in self._conn.notifies):
            if time.monotonic() > deadline:
                log.error("LISTEN does not deliver notifications on this DATABASE_URL "
                          "(a pooled endpoint?): use the database's direct endpoint")
                raise RuntimeError("LISTEN self-check failed")
            gevent.select.select([self._conn.fileno()], [], [], 0.1)
            self._conn.poll()
        self._conn.notifies[:] = [n for n in self._conn.notifies if n.channel != channel]
        self._execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
        self._drain()

    def _serve(self) -> None:
        assert self._conn is not None
        self._refuse_a_replica()
        self._check_listen_works()
        self._held = []
        try:
            # The shared channel first: relay's SQL announces its installation there, so
            # nothing between reading what the database is and LISTENing can be missed.
            shared = list(self._handler.shared_channels())
            self._execute(statements("LISTEN", shared), drain=False)
            self._listening.update(shared)
            self._refresh_due = False
            self._handler.on_database(self._read_info())
            self._drain()  # into _held: after the RESYNC
            self._sync_channels(full=True)
            self._connected = True
            self._handler.on_synced()  # answers waiting attaches, then the RESYNC
        finally:
            held, self._held = self._held, None
        listening = self._listening
        held = [note for note in held if note.channel in listening]
        if held:
            self._handler.on_notifications(held)
        next_check = time.monotonic() + self.settings.db_check_interval
        waiting = Readable(self._conn.fileno(), self._wake_r)
        try:
            self._serve_loop(waiting, next_check)
        finally:
            waiting.close()

    def _serve_loop(self, waiting: Readable, next_check: float) -> None:
        assert self._conn is not None
        while True:
            # Notifications that came with the answer to a handler's query are waiting in
            # conn.notifies, not on the socket: hand them over without sleeping.
            if self._conn.notifies:
                woken = self._read_wake_pipe()
            else:
                # The pipe is read only when it fired: an empty read on every wake-up was a
                # syscall and an exception for each transaction that notifies.
                woken = (waiting.wait(max(0.0, next_check - time.monotonic()))
                         and self._read_wake_pipe())
            self._conn.poll()  # reads what arrived; nothing to read costs one recv
            self._drain()
            if self._refresh_due:
                self._refresh_due = False
                self._handler.on_database(self._read_info())
                self._drain()
            # Comparing the wanted set itself would rebuild a set of every channel on each
            # wake-up (44% of the listener's CPU at 20,000 channels, bench steady).
            if self._handler.wanted_version != self._synced_version:
                self._sync_channels()
                self._handler.on_synced()
            if woken:
                self._handler.on_idle()
                self._drain()
            if time.monotonic() >= next_check:
                self._check()  # trap 6: a dead TCP peer never wakes select()
                next_check = time.monotonic() + self.settings.db_check_interval

    def _read_wake_pipe(self) -> bool:
        """Empty the wake pipe: whether anyone had called ``wake``."""
        woken = False
        try:
            while os.read(self._wake_r, 4096):
                woken = True
        except BlockingIOError:
            pass
        return woken

    def _check(self) -> None:
        """The periodic health query, which also samples what only the database knows: how
        full its NOTIFY queue is (writers' commits fail when it is full) and whether relay's
        SQL is (still) installed."""
        assert self._conn is not None
        with gevent.Timeout(self.settings.db_check_timeout), self._conn.cursor() as cur:
            cur.execute(f"SELECT pg_notification_queue_usage(), {INSTALLED}")
            usage, installed = cur.fetchone()
        # The answer first, then what arrived with it (newer: an install announced there
        # must not be undone by this answer's "not installed").
        self._handler.on_checked(float(usage), bool(installed))
        self._drain()


def next_backoff(previous: float, cap: float) -> float:
    """The delay after ``previous``: doubling from 0.1 s up to ``cap``, each drawn at random
    from the upper half of its step, so that many relays do not reconnect in step."""
    base = min(cap, max(0.1, previous * 2))
    return min(cap, random.uniform(base / 2, base))
