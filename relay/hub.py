"""The per-worker registry of live connections, by channel and by user.

The listener link calls ``publish`` for every update frame it receives; the hub wraps the
message in a WebSocket frame once and hands the same bytes to each connection's queue.
Connections are added only once the listener has confirmed their channels (see ``link``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from relay.websocket import text_frame

if TYPE_CHECKING:
    from relay.connection import Connection


class Hub:
    def __init__(self) -> None:
        self.by_channel: dict[str, set[Connection]] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()  # every open WebSocket, attached or not
        self.published = 0
        self.delivered = 0

    def add(self, conn: Connection) -> None:
        for channel in conn.channels:
            self.by_channel.setdefault(channel, set()).add(conn)
        self.by_user.setdefault(conn.user_id, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        self.connections.discard(conn)
        for channel in conn.channels:
            members = self.by_channel.get(channel)
            if members is not None:
                members.discard(conn)
                if not members:
                    del self.by_channel[channel]
        users = self.by_user.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user_id]

    def publish(self, channel: str, message: bytes) -> None:
        members = self.by_channel.get(channel)
        self.published += 1
        if not members:
            return
        frame = text_frame(message)  # encoded once for every recipient
        for conn in tuple(members):
            conn.enqueue(frame)
        self.delivered += len(members)

    def unroute_all(self) -> list[Connection]:
        """Forget every route (the listener is gone); return the connections that had one."""
        routed = list(self.attached())
        self.by_channel.clear()
        self.by_user.clear()
        return routed

    def attached(self) -> Iterable[Connection]:
        seen: set[Connection] = set()
        for members in self.by_user.values():
            seen.update(members)
        return seen
