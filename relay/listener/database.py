"""The listener's one PostgreSQL connection: LISTEN what is wanted, report what arrives.

``DatabaseLink`` owns the connection and the greenlet that uses it: autocommit (trap 5),
libpq keepalives and a periodic health query under a timeout (trap 6), a self-check that
LISTEN delivers at all (trap 9), every channel name quoted (trap 4), and reconnect for ever
with capped, jittered backoff, LISTENing every wanted channel again before it reports the
connection usable. It knows nothing of workers or clients: it asks a ``DatabaseHandler``
which channels are wanted and reports to it what happens, as centrifuge's broker reports to
its BrokerEventHandler. The listener process's ``Listener`` is that handler.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Set as AbstractSet
from typing import Protocol

import gevent
import gevent.select
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from relay.config import Settings
from relay.listener.resolve import libpq_address

log = logging.getLogger("relay.listener")

# Channels per LISTEN/UNLISTEN round trip: after a reconnect thousands of channels are
# LISTENed again, and one round trip each would delay the resync by seconds over a WAN.
_LISTEN_BATCH = 500
# The least a database connection must have lived for its loss to reset the reconnect
# backoff (see DatabaseLink.run).
_HEALTHY_SECONDS = 5.0


class DatabaseHandler(Protocol):
    """What the database link asks, and what it reports, in the order it happens.

    Every call comes from the link's own greenlet. Per connection: ``on_connected``, then
    ``on_unlistened``/``on_listening`` per channel as the link catches up with
    ``wanted_channels()``, ``on_synced`` once every wanted channel is LISTENed (and again
    after each later catch-up), ``on_notification`` for each notification on a LISTENed
    channel (in commit order, none of this connection before its first ``on_synced``), and
    ``on_disconnected`` when the connection is lost."""

    @property
    def wanted_version(self) -> int:
        """Changes whenever ``wanted_channels()`` gains or loses a channel: the link compares
        it on every wake-up instead of the set (rebuilding a set of every channel each time
        was 44% of the listener's CPU at 20,000 channels, bench steady)."""
        ...

    def wanted_channels(self) -> AbstractSet[str]: ...

    def on_connected(self) -> None: ...

    def on_listening(self, channel: str) -> None: ...

    def on_unlistened(self, channel: str) -> None: ...

    def on_synced(self) -> None: ...

    def on_notification(self, channel: str, payload: str) -> None: ...

    def on_disconnected(self) -> None: ...


class DatabaseLink:
    """Owns the PostgreSQL connection. Only its own greenlet (``run``) ever touches it."""

    def __init__(self, settings: Settings, handler: DatabaseHandler) -> None:
        self.settings = settings
        self._handler = handler
        self._conn: psycopg2.extensions.connection | None = None
        self._listening: set[str] = set()
        self._connected = False  # connected, and every wanted channel LISTENed once
        self.reconnects = 0
        self._synced_version = -1  # the handler's wanted_version at the last sync
        # While re-LISTENing after a (re)connect, notifications wait here: they go out after
        # the RESYNC, so that a client never sees an update of the new epoch before it.
        self._held: list[tuple[str, str]] | None = None
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
                            _describe(exc), delay)
                continue
            connected_at = time.monotonic()
            self._handler.on_connected()
            try:
                self._serve()
            except (Exception, gevent.Timeout) as exc:  # Timeout is a BaseException
                log.error("database connection lost: %s", _describe(exc))
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
        assert self._conn is not None
        notifies = self._conn.notifies
        while notifies:
            note = notifies.pop(0)
            if note.channel not in self._listening:
                continue
            if self._held is not None:
                self._held.append((note.channel, note.payload))
            else:
                self._handler.on_notification(note.channel, note.payload)

    def _sync_channels(self) -> None:
        self._synced_version = self._handler.wanted_version
        wanted = self._handler.wanted_channels()
        gone = sorted(self._listening - wanted)
        # Out of `listening` before the UNLISTEN is sent: an attach that wants one of them
        # again meanwhile waits for the next sync (which LISTENs it afresh) instead of being
        # answered on a channel about to go deaf.
        for channel in gone:
            self._listening.discard(channel)
            self._handler.on_unlistened(channel)
        for batch in _batches(gone):
            self._execute(_statements("UNLISTEN", batch))
        for batch in _batches(sorted(wanted - self._listening)):
            self._execute(_statements("LISTEN", batch), drain=False)
            for channel in batch:
                self._listening.add(channel)
                self._handler.on_listening(channel)
            self._drain()  # what arrived with the answer was committed after the LISTEN

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
        self._check_listen_works()
        self._held = []
        try:
            self._sync_channels()
            self._connected = True
            self._handler.on_synced()  # answers waiting attaches, then the RESYNC
        finally:
            held, self._held = self._held, None
        for channel, payload in held:
            if channel in self._listening:
                self._handler.on_notification(channel, payload)
        next_check = time.monotonic() + self.settings.db_check_interval
        fd = self._conn.fileno()
        while True:
            timeout = max(0.0, next_check - time.monotonic())
            readable, _, _ = gevent.select.select([fd, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            if fd in readable:
                self._conn.poll()
                self._drain()
            # Comparing the wanted set itself would rebuild a set of every channel on each
            # wake-up (44% of the listener's CPU at 20,000 channels, bench steady).
            if self._handler.wanted_version != self._synced_version:
                self._sync_channels()
                self._handler.on_synced()
            if time.monotonic() >= next_check:
                self._execute("SELECT 1")  # trap 6: a dead TCP peer never wakes select()
                next_check = time.monotonic() + self.settings.db_check_interval


def _batches(channels: list[str]) -> list[list[str]]:
    return [channels[i:i + _LISTEN_BATCH] for i in range(0, len(channels), _LISTEN_BATCH)]


def _statements(command: str, channels: list[str]) -> sql.Composable:
    """``LISTEN "a"; LISTEN "b"; …`` in one round trip, every name quoted (trap 4)."""
    return sql.SQL("; ").join(
        sql.SQL(command + " {}").format(sql.Identifier(channel)) for channel in channels)


def next_backoff(previous: float, cap: float) -> float:
    """The delay after ``previous``: doubling from 0.1 s up to ``cap``, each drawn at random
    from the upper half of its step, so that many relays do not reconnect in step."""
    base = min(cap, max(0.1, previous * 2))
    return min(cap, random.uniform(base / 2, base))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
