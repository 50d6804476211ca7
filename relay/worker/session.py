"""Who is at the other end of one connection, and whether they still may be.

A ``Session`` is owned by its ``relay.worker.connection.Connection`` and holds the auth side
of it: the token (in the URL, or in the first message within ``RELAY_AUTH_TIMEOUT``, while
the connection is *pending* in the worker's ``Admission``), the user and channels it grants,
the attach and the listener's answers to it (``connected``, replay, ``resync``, a refusal),
``refresh``, revocation, and the token's expiry. The connection keeps the transport: the
socket, the frames, the heartbeat and the close. The session sends and closes through the
connection that each call names (a ``Transport``), and talks to the worker's ``Node`` for
the rest, as the connection does. It keeps no reference to its connection: a cycle between
the two would keep every finished connection for the cyclic garbage collector, whose full
collections walk every object a worker holds.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Protocol

import gevent
import gevent.event

from relay import closecodes, protocol
from relay.auth import AuthError, Claims, ForbiddenToken, verify_token
from relay.channels import InvalidChannel, channels_for
from relay.closecodes import CloseCode
from relay.worker.admission import PendingTicket
from relay.worker.node import Node
from relay.worker.websocket import text_frame

log = logging.getLogger("relay.connection")

ATTACH_TIMEOUT = 10.0
# The close reason when RELAY_ALLOW_QUERY_TOKEN is off: what the developer must change.
QUERY_TOKEN_REFUSED = "token in the URL refused here: send it in the auth message instead"


class Transport(Protocol):
    """The connection as its session sees it: what to send, and how to end it."""

    @property
    def closing(self) -> CloseCode | None: ...

    def enqueue(self, frame: bytes) -> None: ...

    def close(self, code: CloseCode, detail: str = "", reason: str | None = None) -> None: ...

    def attach(self, resume: dict[str, str]) -> None: ...

    def end_parked(self) -> None: ...


class Session:
    # One per connection, of which a worker holds tens of thousands: slots, no __dict__.
    __slots__ = ("node", "settings", "peer", "_pending", "user_id", "channels",
                 "expires_at", "issued_at", "expiry_warned", "expiry_due", "live",
                 "_answered", "_resume_requested", "auth_timer")

    def __init__(self, node: Node, peer: str, pending: PendingTicket | None) -> None:
        """``pending``: the connection's place among the worker's unauthenticated ones, given
        up once its token verifies."""
        self.node = node
        self.settings = node.settings
        self.peer = peer
        self._pending = pending
        self.user_id = ""
        self.channels: tuple[str, ...] = ()
        self.expires_at = 0
        self.issued_at = 0.0  # the token's iat (relay.auth.Claims.issued_at)
        self.expiry_warned = False
        # When ``expire`` next has something to do (wall clock): the connection's heartbeat
        # looks at its token only from then on, not on every tick.
        self.expiry_due = 0.0
        self.live = False  # attached (or refused): the listener has answered
        # Only while an attach is awaited: an Event per connection for its whole life was two
        # more objects for every full garbage collection to walk (bench scale).
        self._answered: gevent.event.Event | None = None
        self._resume_requested = False
        # The token is to come in the first message: a loop timer until it does.
        self.auth_timer: Any = None

    # ----- the token -----

    def start(self, conn: Transport, refusal: tuple[CloseCode, str] | None,
              query_token: str | None, query_resume: str | None) -> None:
        """The connection's first step: refused, authenticated by the token in its URL, or
        waiting for its auth message."""
        if refusal is not None:
            conn.close(*refusal)
        elif query_token is not None and not self.settings.allow_query_token:
            # Closed before the token is even read. Not an HTTP refusal: a browser reports
            # any of those as 1006 and retries for ever, unable to tell anyone why; 4003 stops
            # a well-behaved client, and its reason says what to change.
            self._refuse(conn, closecodes.FORBIDDEN, QUERY_TOKEN_REFUSED)
        elif query_token is not None:
            resume = protocol.parse_resume_query(query_resume) if query_resume else None
            self._authenticate(conn, query_token, resume)
        else:
            # The token comes in the first message. Until then the connection parks like any
            # other, and its handshake's greenlet gives its slot of the worker's pool back
            # (RELAY_HANDSHAKE_CONCURRENCY): clients that open a WebSocket and say nothing
            # for RELAY_AUTH_TIMEOUT must not keep new handshakes and /health waiting.
            self.auth_timer = gevent.get_hub().loop.timer(self.settings.auth_timeout)
            self.auth_timer.start(self._auth_expired, conn)
            if self._pending is not None:
                # Over the worker's unauthenticated budget, a newcomer closes this one early
                # (relay.worker.admission): from the hub, as the auth timer would.
                self._pending.on_evict = partial(self._evicted, conn)

    def _auth_expired(self, conn: Transport) -> None:
        """No auth message in time: runs in the hub (a loop timer), and close never blocks."""
        self.stop_auth_timer()
        if conn.closing is None:
            self.node.count_auth_failure("auth timeout")
            conn.close(closecodes.AUTH_TIMEOUT, "no auth message in time")

    def _evicted(self, conn: Transport) -> None:
        """A newer connection took this pending one's place: the auth timeout, come early
        because the worker's unauthenticated budget is full. Its close frame goes out, but its
        place is given back at once, and its worker slot as soon as the frame is out: not
        after a closing handshake a horde would never complete. Runs on the newcomer's
        greenlet, so it only spawns."""
        self.stop_auth_timer()
        if conn.closing is not None:
            return
        self.node.count_auth_failure("evicted while pending")
        conn.close(closecodes.AUTH_TIMEOUT,
                   "too many unauthenticated connections: authenticate at once")
        conn.end_parked()

    def stop_auth_timer(self) -> None:
        if self.auth_timer is not None:
            self.auth_timer.close()
            self.auth_timer = None

    def authenticate_message(self, conn: Transport, message: dict[str, Any]) -> None:
        """The first message of a connection without a token in its URL."""
        self.stop_auth_timer()
        if message.get("type") != protocol.AUTH:
            self.node.count_auth_failure("no auth message")
            conn.close(closecodes.UNAUTHORIZED, "expected an auth message")
            return
        self._authenticate(conn, message.get("token"), message.get("resume"))

    def _authenticate(self, conn: Transport, token: object, resume: object) -> None:
        """Check the token, then attach and wait for the listener's answer."""
        try:
            claims = self._verify(token)
            channels = channels_for(claims.user_id, self.settings.channel_templates)
        except ForbiddenToken as exc:
            self._refuse(conn, closecodes.FORBIDDEN, exc.reason)
            return
        except InvalidChannel as exc:
            self._refuse(conn, closecodes.FORBIDDEN, str(exc))
            return
        except AuthError as exc:
            self._refuse(conn, closecodes.UNAUTHORIZED, exc.reason)
            return
        self.leave_pending()
        self.user_id = claims.user_id
        self.channels = channels
        self.expires_at = claims.expires_at
        self.issued_at = claims.issued_at
        cursors = protocol.resume_cursors(resume, channels)
        if cursors:
            # A replay costs the listener up to half a queue of messages: not many times a
            # second for one user (relay.worker.admission).
            wait = self.node.admission.resume_wait(claims.user_id)
            if wait:
                self.node.count("resume_throttled")
                conn.close(closecodes.TRY_AGAIN_LATER,
                           f"resuming too often: retry in {math.ceil(wait)}s")
                return
        self._resume_requested = bool(cursors)
        self._answered = answered = gevent.event.Event()
        conn.attach(cursors)
        try:
            if not answered.wait(ATTACH_TIMEOUT) and conn.closing is None:
                conn.close(closecodes.TRY_AGAIN_LATER, "listener unavailable")
        finally:
            self._answered = None

    def _answer(self) -> None:
        self.live = True
        if self._answered is not None:
            self._answered.set()

    def leave_pending(self) -> None:
        if self._pending is not None:
            self._pending.release()
            self._pending = None

    def _verify(self, token: object) -> Claims:
        settings = self.settings
        return verify_token(token, settings.jwt_secret, settings.max_token_bytes,
                            issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                            max_lifetime=settings.max_token_lifetime)

    def _refuse(self, conn: Transport, code: CloseCode, reason: str) -> None:
        self.node.count_auth_failure(reason)
        log.info("refused %s: %s (%d)", self.peer, reason, code.code,
                 extra={"event": "refused", "code": code.code, "reason": reason})
        conn.close(code, reason)

    def refresh(self, conn: Transport, token: object) -> None:
        try:
            claims = self._verify(token)
        except AuthError as exc:
            code = (closecodes.FORBIDDEN if isinstance(exc, ForbiddenToken)
                    else closecodes.UNAUTHORIZED)
            self._refuse(conn, code, f"refresh: {exc.reason}")
            return
        if claims.user_id != self.user_id:
            self._refuse(conn, closecodes.FORBIDDEN, "refresh for another user")
            return
        revoked = self.node.revoked_at(claims.user_id)
        if revoked is not None and claims.issued_at < revoked:
            self._refuse(conn, closecodes.UNAUTHORIZED, "refresh: token revoked")
            return
        self.expires_at = claims.expires_at
        self.issued_at = claims.issued_at
        self.expiry_warned = False
        self.expiry_due = 0.0
        self._send(conn, protocol.encode_token_refreshed(self.expires_at))

    def expire(self, conn: Transport, wall: float) -> bool:
        """The token's part of the heartbeat, once ``expiry_due`` has come: warn the client
        within ``RELAY_TOKEN_REFRESH_WINDOW`` of the expiry, close it (4001) at the expiry.
        ``True`` when it closed the connection."""
        if wall >= self.expires_at:
            self.node.count_auth_failure("token expired")
            conn.close(closecodes.UNAUTHORIZED, "token expired")
            return True
        remaining = self.expires_at - wall
        if not self.expiry_warned and remaining <= self.settings.token_refresh_window:
            self.expiry_warned = True
            self._send(conn, protocol.encode_token_expiring(self.expires_at,
                                                            max(0, int(remaining))))
        self.expiry_due = (self.expires_at if self.expiry_warned
                           else self.expires_at - self.settings.token_refresh_window)
        return False

    # ----- the listener's answers (the link's reader greenlet, in stream order) -----

    def on_refused(self, conn: Transport, code: int, reason: str) -> None:
        conn.close(closecodes.BY_CODE.get(code, closecodes.TRY_AGAIN_LATER), reason)
        self._answer()

    def on_attached(self, conn: Transport, reply: dict[str, Any], reattach: bool) -> None:
        cursors = reply.get("cursors") or {}
        resync = reply.get("resync") or []
        replay = reply.get("replay") or []
        enqueue = conn.enqueue
        if reattach:
            # Attached again after a listener restart: what the client missed meanwhile, or a
            # resync of the channels whose missed updates cannot be replayed. No `connected`:
            # the client never saw a change.
            for message in replay:
                enqueue(text_frame(message.encode()))
            if resync:
                self.node.count("resync")
                self._send(conn, protocol.encode_resync(
                    str(reply.get("reason") or "listener restarted"), resync,
                    {c: cursors.get(c) for c in resync}))
            return
        self.node.count("connected")
        self._send(conn, protocol.encode_connected(
            self.user_id, self.channels, reply.get("epoch"), cursors, self.expires_at,
            self.settings.ping_interval, self._resume_requested and not resync))
        for message in replay:
            enqueue(text_frame(message.encode()))
        if resync:
            self.node.count("resync", len(resync))
            self._send(conn, protocol.encode_resync(
                str(reply.get("reason") or "history unavailable"), resync,
                {c: cursors.get(c) for c in resync}))
        log.info("user %s connected from %s (%d replayed, %d resync)",
                 self.user_id, self.peer, len(replay), len(resync),
                 extra={"user": self.user_id, "event": "connected"})
        self._answer()

    def on_resync(self, conn: Transport, reason: str, cursors: dict[str, str]) -> None:
        """The listener could not deliver everything on the channels of ``cursors``."""
        self.node.count("resync")
        self._send(conn, protocol.encode_resync(
            reason, [channel for channel in self.channels if channel in cursors], cursors))

    def _send(self, conn: Transport, message: bytes) -> None:
        conn.enqueue(text_frame(message))
