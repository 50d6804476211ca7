"""The contract between the listener's database link and its handler.

``DatabaseLink`` (``relay.listener.database``) knows nothing of workers or clients: it asks a
``DatabaseHandler`` which channels are wanted and reports to it what happens, as centrifuge's
broker reports to its BrokerEventHandler. The listener's ``Router`` is that handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from relay.listener.queries import DatabaseInfo


class Notification(Protocol):
    """One notification as psycopg2 delivers it (its ``Notify``)."""

    @property
    def channel(self) -> str: ...

    @property
    def payload(self) -> str: ...


class DatabaseHandler(Protocol):
    """What the database link asks, and what it reports, in the order it happens.

    Every call comes from the link's own greenlet. Per connection: ``on_connected``; then,
    once the shared channels are LISTENed, ``on_database``; ``on_synced`` once every wanted
    channel is LISTENed (and again after each later catch-up); ``on_notifications`` with
    the notifications on LISTENed channels that arrived together (in commit order, none of
    this connection before its first ``on_synced``); ``on_checked`` after each periodic
    health query; ``on_database`` again after each ``refresh``; and ``on_disconnected``
    when the connection is lost."""

    def shared_channels(self) -> tuple[str, ...]:
        """Channels LISTENed on every connection whatever is wanted (relay's own), first."""
        ...

    @property
    def wanted_version(self) -> int:
        """Changes whenever the wanted channels (shared or per user) may have changed: the
        link compares it on every wake-up instead of any set (rebuilding a set of every
        channel each time was 44% of the listener's CPU at 20,000 channels, bench steady)."""
        ...

    def wanted_channels(self) -> AbstractSet[str]:
        """Every per-user channel to LISTEN now (read after a (re)connect, and when
        ``wanted_changes`` says so)."""
        ...

    def wanted_changes(self) -> AbstractSet[str] | None:
        """The per-user channels that may have changed since the last call, to look at with
        ``is_wanted``; ``None``: compare everything with ``wanted_channels()``."""
        ...

    def is_wanted(self, channel: str) -> bool: ...

    def on_connected(self) -> None: ...

    def on_database(self, info: DatabaseInfo) -> None: ...

    def on_synced(self) -> None: ...

    def on_notifications(self, notes: Sequence[Notification]) -> None:
        """What arrived together, in order: one call per read, not per notification (a
        burst's 50,000 would otherwise pay the call and its set-up 50,000 times)."""
        ...

    def on_checked(self, queue_usage: float, installed: bool) -> None: ...

    def on_idle(self) -> None:
        """After every wake-up of a usable connection (someone called ``wake``), once the
        notifications that had arrived were handed over: the handler's queued database work."""
        ...

    def on_disconnected(self) -> None: ...
