"""The per-worker routes of attached connections, by channel and by user.

The node adds a connection when the listener's ``ATTACHED`` answer for it is read, and
hands every ``UPDATE`` to ``publish``, which gives the same bytes (the WebSocket frame the
listener built, once for every worker) to each member of the channel. The hub knows a
connection only as a ``Member``: its user, its channels and where its frames go.

It also keeps, for each routed channel, the cursor its members have reached: every member of
a channel has been given every update routed to it since its ``ATTACHED``, which brought it
to the listener's head. After a listener restart the node resumes each connection from
there, and a listener in front of the database's durable history replays what they missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

_CURSOR_KEY = b'"cursor":"'  # relay.protocol.encode_update writes it once, before "data"


class Member(Protocol):
    @property
    def user_id(self) -> str: ...

    @property
    def channels(self) -> tuple[str, ...]: ...

    def enqueue(self, frame: bytes) -> None: ...


M = TypeVar("M", bound=Member)


class Hub(Generic[M]):
    def __init__(self) -> None:
        # A route is its one member, or a tuple of them: a channel or a user almost always has
        # one connection. A 1-tuple costs a quarter of a 1-element set (bench idle: 0.5 KB per
        # connection), and no container at all spares every full garbage collection three
        # objects per connection (bench scale: 17,000 connections a worker).
        self.by_channel: dict[str, M | tuple[M, ...]] = {}
        self.by_user: dict[str, M | tuple[M, ...]] = {}
        self._cursors: dict[str, bytes] = {}  # routed channel → its members' cursor
        self.published = 0
        self.delivered = 0

    def add(self, member: M, cursors: dict[str, str] | None = None) -> None:
        """Route ``member``; ``cursors``: where its ``ATTACHED`` brought its channels."""
        for channel in member.channels:
            _route(self.by_channel, channel, member)
            cursor = cursors.get(channel) if cursors else None
            if isinstance(cursor, str) and cursor.count(":") == 2:
                # A cursor of the database's durable history (an in-memory one dies with its
                # listener: nothing to keep). The listener's head: never behind what was
                # routed here before.
                self._cursors[channel] = cursor.encode()
        _route(self.by_user, member.user_id, member)

    def remove(self, member: M) -> bool:
        """Forget ``member``'s routes; whether it had any (it was attached)."""
        routed = member in _members(self.by_user.get(member.user_id))
        for channel in member.channels:
            if _unroute(self.by_channel, channel, member):
                self._cursors.pop(channel, None)
        _unroute(self.by_user, member.user_id, member)
        return routed

    def publish(self, channel: str, frame: bytes) -> None:
        """Give ``frame`` (a WebSocket text frame holding an ``update``) to the channel's
        members."""
        route = self.by_channel.get(channel)
        self.published += 1
        if route is None:
            return
        if channel in self._cursors:
            # The cursor's place in the message: a JSON string value never holds `"cursor":"`
            # unescaped, so the first one is the field (the frame's header is 2-10 bytes
            # before the message and cannot hold it either).
            start = frame.find(_CURSOR_KEY)
            if start >= 0:
                start += len(_CURSOR_KEY)
                self._cursors[channel] = frame[start:frame.find(b'"', start)]
        if type(route) is tuple:
            for member in route:  # a snapshot: enqueue may change the routes, not this tuple
                member.enqueue(frame)
            self.delivered += len(route)
        else:
            route.enqueue(frame)  # type: ignore[union-attr]  # a member, not a tuple
            self.delivered += 1

    def unroute_all(self) -> list[tuple[M, dict[str, str | None]]]:
        """Forget every route (the listener is gone); return the members that had one, each
        with the cursor it reached on each of its channels (``None``: unknown)."""
        cursors = self._cursors
        routed = [(member, {channel: cursor.decode() if (cursor := cursors.get(channel))
                            else None for channel in member.channels})
                  for member in self.attached()]
        self.by_channel.clear()
        self.by_user.clear()
        self._cursors = {}
        return routed

    def attached(self) -> Iterable[M]:
        seen: set[M] = set()
        for route in self.by_user.values():
            seen.update(_members(route))
        return seen


def _members(route: M | tuple[M, ...] | None) -> tuple[M, ...]:
    if route is None:
        return ()
    return route if type(route) is tuple else (route,)  # type: ignore[return-value]


def _route(routes: dict[str, M | tuple[M, ...]], key: str, member: M) -> None:
    members = _members(routes.get(key))
    if member not in members:
        routes[key] = (*members, member) if members else member


def _unroute(routes: dict[str, M | tuple[M, ...]], key: str, member: M) -> bool:
    """Remove ``member`` from ``key``'s route; whether the route is gone with it."""
    if key not in routes:
        return False
    remaining = tuple(m for m in _members(routes[key]) if m is not member)
    if len(remaining) > 1:
        routes[key] = remaining
    elif remaining:
        routes[key] = remaining[0]
    else:
        del routes[key]
        return True
    return False
