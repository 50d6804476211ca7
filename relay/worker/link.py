"""A worker's link to the listener process over the Unix-domain socket.

Sends attach/detach requests (``bus`` framing) and reads the listener's stream. The
stream is handled strictly in order in one greenlet, which is what makes delivery exact:
the handler (the worker's ``Node``) routes a connection in its hub at the moment that
connection's ``ATTACHED`` answer is read, so every update after that answer reaches it and
none before it does (those are in its replay, if any).

The link knows a connection only as an ``Attachment`` (a user and its channels) that it
hands back to its ``LinkHandler``. If the listener dies, the link reconnects for ever and
tells the handler, which attaches its connections again from where they were: the new
listener replays what they missed from the database's durable history, or, when it keeps its
history in memory (it has none of its predecessor's), tells them to resync. The listener
pushes the instance's figures about once a second; the link keeps the latest for ``/health``
and ``/metrics``, so that those cost the listener nothing per request.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import deque
from typing import Any, Generic, Protocol, TypeVar

import gevent
import gevent.event

from relay import bus, closecodes, listener_socket

log = logging.getLogger("relay.link")


class Attachment(Protocol):
    @property
    def user_id(self) -> str: ...

    @property
    def channels(self) -> tuple[str, ...]: ...

    @property
    def issued_at(self) -> float: ...


A = TypeVar("A", bound=Attachment)
A_contra = TypeVar("A_contra", bound=Attachment, contravariant=True)


class LinkHandler(Protocol[A_contra]):
    """What the link reports, from its reader greenlet, in the order of the stream."""

    def on_update(self, channel: str, frame: bytes) -> None:
        """An update for ``channel``: ``frame`` is the WebSocket frame its members get."""

    def on_attached(self, attachment: A_contra, reply: dict[str, Any], reattach: bool
                    ) -> None: ...

    def on_refused(self, attachment: A_contra, code: int, reason: str) -> None: ...

    def on_resync(self, reason: str, cursors: dict[str, str], default: str | None) -> None:
        """Updates may have been missed: ``cursors`` are the new positions, ``default`` that
        of every channel not in it (after a database reconnect: all of them), if given."""

    def on_lost(self) -> None:
        """The listener is gone: nothing it counted is counted any more."""

    def on_reconnected(self) -> None:
        """A listener answers again (not the first time): attach again what was attached."""

    def on_revoked(self, revoked: dict[str, float]) -> None:
        """These users' tokens issued before these times (epoch seconds) are void."""


class _Pending(Generic[A]):
    """An ATTACH in flight: its frame (encoded before it is registered, so that a request
    that cannot be encoded never leaves an entry behind) and whose answer it awaits. A
    connection that finishes while its request is in flight on a live listener leaves only a
    small tombstone (``attachment`` None) so that the answer is followed by a DETACH; a
    tombstone is dropped with the listener connection it was sent on."""

    __slots__ = ("attachment", "frame", "reattach", "user", "channels")

    def __init__(self, attachment: A | None, frame: bytes, reattach: bool, user: str,
                 channels: list[str]) -> None:
        self.attachment = attachment
        self.frame = frame
        self.reattach = reattach
        self.user = user
        self.channels = channels


class ListenerLink(Generic[A]):
    """``unreachable_warning_after``: seconds of failed connects before a warning. A worker
    usually starts before its listener has bound the socket (the listener connects to the
    database first), and after a listener's restart the supervisor needs a moment: neither
    is worth an operator's attention, a socket still absent after a few seconds is."""

    def __init__(self, socket_path: str, handler: LinkHandler[A],
                 unreachable_warning_after: float = 5.0) -> None:
        self.socket_path = socket_path
        self.unreachable_warning_after = unreachable_warning_after
        self._handler = handler
        self.connected = gevent.event.Event()
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending[A]] = {}
        self._request_of: dict[A, int] = {}  # attachments with an ATTACH in flight
        self._stats: dict[str, Any] | None = None  # the listener's latest figures
        self._stats_at = 0.0  # when they arrived (monotonic)
        self._out: deque[bytes] = deque()
        self._out_ready = gevent.event.Event()

    def start(self) -> None:
        gevent.spawn(self._run)
        gevent.spawn(self._writer)

    # ----- requests -----

    def attach(self, attachment: A, resume: dict[str, str | None],
               reattach: bool = False) -> None:
        """Ask the listener for the attachment's channels; the handler hears the answer.
        ``reattach``: the connection was attached to a listener that is gone, and resumes
        from ``resume``, where that listener had brought it."""
        req = next(self._ids)
        channels = list(attachment.channels)
        # The token's issue time: the listener refuses a revoked user's older tokens.
        body: dict[str, Any] = {"req": req, "user": attachment.user_id, "channels": channels,
                                "resume": resume, "iat": attachment.issued_at}
        if reattach:
            body["reattach"] = True
        frame = bus.encode(bus.ATTACH, body)
        self._pending[req] = _Pending(attachment, frame, reattach, attachment.user_id, channels)
        self._request_of[attachment] = req
        if self.connected.is_set():
            self._send(frame)

    def release(self, attachment: A, attached: bool) -> None:
        """The attachment is finished: the listener stops counting it, whatever state it was
        in (``attached``: the current listener's answer admitted it)."""
        req = self._request_of.pop(attachment, None)
        if req is not None:
            pending = self._pending.pop(req)
            if self.connected.is_set():
                # This listener has the ATTACH (or will have it before anything we send
                # next): its answer must be followed by a DETACH, if it counted the connection.
                self._pending[req] = _Pending(None, b"", False, pending.user, pending.channels)
            # Otherwise no listener has it: it would only have been sent to the next one.
        elif attached:
            self._detach(attachment.user_id, list(attachment.channels))

    def _detach(self, user: str, channels: list[str]) -> None:
        if self.connected.is_set():
            self._send(bus.encode(bus.DETACH, {"user": user, "channels": channels}))

    def in_flight(self) -> int:
        """ATTACH requests awaiting an answer (tombstones included); for tests and /metrics."""
        return len(self._pending)

    def stats(self, max_age: float) -> dict[str, Any] | None:
        """The instance's figures the listener pushed last, if it did within ``max_age``
        seconds on the current connection; no request to the listener."""
        if self._stats is None or time.monotonic() - self._stats_at > max_age:
            return None
        return self._stats

    def push_counters(self, snapshot: dict[str, Any]) -> None:
        """Send this worker's cumulative counters; the listener sums them for /metrics."""
        if self.connected.is_set():
            self._send(bus.encode(bus.COUNTERS, snapshot))

    def _send(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_ready.set()

    def _writer(self) -> None:
        while True:
            self._out_ready.wait()
            self._out_ready.clear()
            while self._out and self._sock is not None and self.connected.is_set():
                batch = b"".join(self._out)
                self._out.clear()
                try:
                    self._sock.sendall(batch)
                except OSError:
                    break  # the reader notices and reconnects; requests are re-sent

    # ----- the stream from the listener -----

    def _run(self) -> None:
        first = True
        while True:
            sock = self._connect()
            try:
                sock.sendall(bus.encode(bus.HELLO, {"pid": os.getpid(), "bus": bus.VERSION}))
            except OSError as exc:
                # A listener being killed can still accept (its backlog) and then reset: the
                # link must try again, not die with its greenlet — a worker whose link died
                # answered every new WebSocket 1013 for the rest of its life (seen in CI).
                log.warning("listener went away during the hello (%s); reconnecting", exc)
                sock.close()
                gevent.sleep(0.05)
                continue
            self._sock = sock
            self._out.clear()  # frames for the previous listener are meaningless now
            if not first:
                self._handler.on_reconnected()  # its attaches go out with the pending ones
            first = False
            self.connected.set()
            for pending in self._pending.values():
                self._send(pending.frame)
            self._out_ready.set()
            try:
                self._read(sock)
            except (OSError, bus.BusProtocolError) as exc:
                log.error("listener link broken: %s", exc)
            except Exception:
                # A bug while handling the stream must not end the link for good: start over,
                # and every connection is attached again and resynced.
                log.exception("listener link failed; reconnecting")
            self.connected.clear()
            self._sock = None
            sock.close()
            # Tombstones die with the listener they were sent to; live requests go to the next.
            self._pending = {req: p for req, p in self._pending.items()
                             if p.attachment is not None}
            self._stats = None
            self._handler.on_lost()
            log.warning("lost the listener; reconnecting")

    def _connect(self) -> socket.socket:
        delay = 0.05
        warned = False
        since = time.monotonic()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                waited = time.monotonic() - since
                if not warned and waited >= self.unreachable_warning_after:
                    log.warning("listener not reachable at %s for %.0f s (%s); retrying",
                                self.socket_path, waited, exc.strerror)
                    warned = True
            else:
                if listener_socket.is_own_user(sock):
                    return sock
                # Not our listener: it would read every user id and could send any update.
                pid, uid = listener_socket.peer(sock)
                sock.close()
                if not warned:
                    log.error("the process at %s (pid %s) belongs to uid %s, not to relay's "
                              "user: not talking to it; retrying", self.socket_path, pid, uid)
                    warned = True
            gevent.sleep(delay)
            delay = min(0.5, delay * 2)

    def _read(self, sock: socket.socket) -> None:
        reader = bus.FrameReader()
        on_update, on_frame = self._handler.on_update, self._on_frame
        while True:
            data = sock.recv(262144)
            if not data:
                return
            # Updates (nearly every frame) go straight to the handler, in stream order.
            reader.dispatch(data, on_update, on_frame)

    def _on_frame(self, kind: int, body: bytes) -> None:
        if kind == bus.ATTACHED:
            self._on_attached(bus.decode_json(body))
        elif kind == bus.RESYNC:
            message = bus.decode_json(body)
            default = message.get("cursor")
            self._handler.on_resync(str(message.get("reason", "resync")),
                                    message.get("cursors") or {},
                                    default if isinstance(default, str) else None)
        elif kind == bus.STATS_REPLY:
            self._stats = bus.decode_json(body)
            self._stats_at = time.monotonic()
        elif kind == bus.REVOKED:
            revoked = bus.decode_json(body).get("revoked")
            if isinstance(revoked, dict):
                self._handler.on_revoked({
                    user: float(at) for user, at in revoked.items()
                    if isinstance(at, (int, float)) and not isinstance(at, bool)})
        else:
            raise bus.BusProtocolError(f"kind {kind} is not for a worker")

    def _on_attached(self, reply: dict[str, Any]) -> None:
        pending = self._pending.pop(reply.get("req"), None)  # type: ignore[arg-type]
        if pending is None:
            return
        attachment = pending.attachment
        if attachment is None:  # finished while in flight
            if reply.get("ok"):
                self._detach(pending.user, pending.channels)
            return
        del self._request_of[attachment]
        if not reply.get("ok"):
            code = int(reply.get("code", closecodes.TRY_AGAIN_LATER.code))
            self._handler.on_refused(attachment, code, str(reply.get("reason", "")))
            return
        self._handler.on_attached(attachment, reply, pending.reattach)
