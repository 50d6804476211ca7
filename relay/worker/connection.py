"""One client's WebSocket, as a small state machine: auth → attach → live → closing.

The handshake's greenlet runs ``serve()``: it authenticates, asks the listener link for the
user's channels, then *parks* the connection and returns. A parked connection holds no
greenlet, only a read watcher on its socket: when the client sends something, a short-lived
greenlet reads and handles every frame that has arrived, and parks the connection again
(``_read_buffered``). A greenlet per idle connection was most of relay's memory per
connection (bench idle), and an idle connection is what relay holds most of.

Everything sent to the client goes through the connection's ``Writer`` (its bounded queue
and backpressure policy); a client that lets the queue overflow is closed with 4009. The
messages themselves are built by ``relay.protocol``. Who the client is (the token, its
refresh and expiry, the attach and the listener's answers) is the connection's ``Session``
(``relay.worker.session``); the connection keeps the transport and the state machine.
Heartbeats and token expiry are checked by the worker's ``Node`` housekeeping, not by a timer
per connection. The node is the only part of the worker a connection talks to.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from relay import closecodes, protocol
from relay.closecodes import CloseCode
from relay.protocol import InvalidMessage
from relay.worker.admission import PendingTicket
from relay.worker.node import Node
from relay.worker.ratelimit import MessageRate
from relay.worker.session import Session
from relay.worker.websocket import (
    OP_PONG,
    ConnectionEnded,
    Event,
    FrameReader,
    ProtocolViolation,
    close_frame,
    close_frame_end,
    encode_frame,
    is_pong_frame,
    text_frame,
)
from relay.worker.writer import Writer

log = logging.getLogger("relay.connection")

CLOSE_HANDSHAKE_TIMEOUT = 3.0
LINGER_DRAIN_BYTES = 1 << 20  # read and dropped from a client that broke the protocol again
_PING = text_frame(protocol.ENCODED_PING)
# A pong as the bundled client writes it (JSON.stringify({type: 'pong'})).
_PONG_TEXT = b'{"type":"pong"}'
_PONG_FRAME_BYTES = 6 + len(_PONG_TEXT)  # header, mask, text
_CLOSE_PEEK_BYTES = 4096  # enough for a client's answer to our close


def _ended() -> bool:
    """A step of ``Connection._drive`` that only finishes the connection."""
    return False


class Connection:
    def __init__(self, node: Node, sock: socket.socket, rfile: Any, peer: str,
                 pending: PendingTicket | None = None) -> None:
        """``rfile`` has ``read(n)``; a ``pending`` attribute (bytes read from the socket but
        not consumed yet) lets the connection park, which it does only if it owns ``sock``.
        ``pending``: its place among the worker's unauthenticated connections (its
        session's, until its token verifies)."""
        self.node = node
        self.settings = node.settings
        self.sock = sock
        self.peer = peer
        self._input = rfile
        self._rate = MessageRate(self.settings.client_msg_rate)
        # Every frame counts toward the rate limit, checked before its payload is read.
        self.reader = FrameReader(rfile.read, self.settings.max_message_bytes,
                                  on_frame=self._rate.check)
        self._watcher: Any = None  # the read watcher of a parked connection
        # Set by ``run``, whose caller waits on it and cannot hand its socket over: such a
        # connection never parks, its greenlet reads to the end.
        self._finished: gevent.event.Event | None = None
        self.session = Session(node, peer, pending)
        self.closed = False  # the socket is finished with
        self.closing: CloseCode | None = None
        self.close_detail = ""
        self.opened_at = time.monotonic()
        self.next_ping = 0.0
        self.awaiting_pong_since: float | None = None
        self._writer = Writer(sock, self.settings.queue_max_messages,
                              self.settings.queue_max_bytes)
        self._abort_timer: Any = None  # a loop timer while the close handshake runs

    # ----- outbound -----

    def enqueue(self, frame: bytes) -> None:
        if self.closing is not None:
            return
        refusal = self._writer.enqueue(frame)
        if refusal is not None:  # the writer's policy: this client is too slow
            self.node.count("slow_consumer")
            self.close(refusal, "outbound queue overflow")

    def close(self, code: CloseCode, detail: str = "", reason: str | None = None) -> None:
        """Start the closing handshake: the close frame goes after what is already queued."""
        if self.closing is not None or self.closed:
            return
        self.closing = code
        self.close_detail = detail or code.reason
        self.node.closed_with(code)
        self._writer.send_last(close_frame(code.code, reason or detail or code.reason))
        if not self.node.draining:  # a drain's deadline ends what is left (node.drain)
            # A loop timer, not a greenlet; its callback runs in the hub: abort never blocks.
            self._abort_timer = gevent.get_hub().loop.timer(CLOSE_HANDSHAKE_TIMEOUT)
            self._abort_timer.start(self._writer.abort)

    # ----- life cycle -----

    def serve(self, query_token: str | None, query_resume: str | None) -> None:
        """Authenticate and attach, then park the connection and return (it lives on)."""
        refusal = self.node.register(self)
        self._drive(self._start, refusal, query_token, query_resume)

    def run(self, query_token: str | None, query_resume: str | None) -> None:
        """``serve``, then wait until the connection is finished: for a caller that cannot
        hand its socket over (the socket is closed when the caller returns)."""
        self._finished = gevent.event.Event()
        self.serve(query_token, query_resume)
        self._finished.wait()

    def _drive(self, step: Callable[..., bool], *args: Any) -> None:
        """Run one step of the connection on the current greenlet; finish the connection
        unless the step parked it."""
        parked = False
        try:
            parked = step(*args)
        except ProtocolViolation as exc:
            self.close(exc.code, exc.detail)
            self._linger()
        except InvalidMessage as exc:
            self.close(closecodes.POLICY_VIOLATION, str(exc))
            self._linger()
        except ConnectionEnded:
            pass
        except Exception:
            log.exception("connection of user %s failed", self.user_id or "-")
            self.close(closecodes.INTERNAL_ERROR)
            self._linger()
        finally:
            if not parked:
                self._finish()

    def _start(self, refusal: tuple[CloseCode, str] | None, query_token: str | None,
               query_resume: str | None) -> bool:
        self.session.start(self, refusal, query_token, query_resume)
        return self._read_buffered(readable=False)

    def _read_buffered(self, readable: bool) -> bool:
        """Handle every frame the client has sent so far, then park; ``False`` once the
        closing handshake is complete.

        ``readable``: the socket has news (its watcher fired), so read at least once. A frame
        that has only partly arrived is read to its end on this greenlet, so that the reader
        parks only at a frame boundary."""
        while readable or self._finished is not None or self._input.pending:
            readable = False
            if not self._read_frame():
                return False
        self._park()
        return True

    def _park(self) -> None:
        if self._watcher is None:
            self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        """The parked connection's socket is readable: runs in the hub, so it never waits. A
        lone pong is taken here; anything else is read by a greenlet of its own."""
        if self._took_pong() or self._took_close_answer():
            return
        self._watcher.stop()
        gevent.spawn(self._drive, self._read_buffered, True)

    def _took_close_answer(self) -> bool:
        """During a drain, the client's answer to our close (its close frame, after whatever
        came first, or the end of its stream) is read and the connection finished here, in
        the hub: a greenlet per answer queued them (bench scale, 2 starved workers of 20,000:
        ready greenlets waited 8 s and half the answers were unread when the drain ended)."""
        if not self.node.draining or self.closing is None or not self._writer.idle:
            return False
        raw = getattr(self.sock, "_sock", self.sock)  # not tied to the hub: never waits
        try:
            data = raw.recv(_CLOSE_PEEK_BYTES, socket.MSG_PEEK)
        except OSError:
            return False
        end = close_frame_end(self._input.pending + data) if data else 0
        if end is None:
            return False
        raw.recv(max(0, end - len(self._input.pending)))  # what was peeked, all there
        self._finish()
        return True

    def _took_pong(self) -> bool:
        """Read and handle the client's answer to a heartbeat, if that is all it sent.

        What a worker reads most (at 100,000 connections, 5,000 pongs a second): a greenlet,
        a frame reader's pass and a JSON parse for each was most of the heartbeat's cost.
        Only a whole, canonical pong frame, between two messages and within the client's
        message rate, is taken; anything else is left to the reader, which checks every
        rule (a peek, so nothing is consumed unless taken)."""
        if (self._input.pending or self.session.auth_timer is not None
                or self.closing is not None or not self.reader.between_messages):
            return False
        raw = getattr(self.sock, "_sock", self.sock)  # not tied to the hub: never waits
        try:
            data = raw.recv(_PONG_FRAME_BYTES + 1, socket.MSG_PEEK)
        except OSError:
            return False
        if not is_pong_frame(data, _PONG_TEXT) or not self._rate.take():
            return False
        raw.recv(len(data))  # what was peeked, all there
        self.awaiting_pong_since = None
        return True

    # ----- the session's -----

    @property
    def user_id(self) -> str:
        return self.session.user_id

    @property
    def channels(self) -> tuple[str, ...]:
        return self.session.channels

    @property
    def issued_at(self) -> float:
        return self.session.issued_at

    def attach(self, resume: dict[str, str]) -> None:
        """Ask the listener for the session's channels: the connection is what the worker's
        hub routes to."""
        self.node.attach(self, resume)

    def end_parked(self) -> None:
        """End a parked connection (its session was evicted while pending). Parked, so no
        greenlet of its own reads it: one ends it now. (A greenlet reading its auth message
        right now ends it itself.)"""
        if self._watcher is not None and self._watcher.active:
            self._watcher.stop()
            gevent.spawn(self._drive, _ended)

    def on_attached(self, reply: dict[str, Any], reattach: bool) -> None:
        """Runs in the link's reader greenlet, in stream order (see ``link``)."""
        if not reattach:
            self.next_ping = time.monotonic() + self.settings.ping_interval
        self.session.on_attached(self, reply, reattach)

    def on_refused(self, code: int, reason: str) -> None:
        self.session.on_refused(self, code, reason)

    def on_resync(self, reason: str, cursors: dict[str, str]) -> None:
        self.session.on_resync(self, reason, cursors)

    def _read_frame(self) -> bool:
        """Read and handle one frame; ``False`` once the closing handshake is complete."""
        event = self.reader.next_frame()
        if event is None:  # a fragment: its message is not complete yet
            return True
        if event.kind == "text":
            if self.closing is None:
                self._handle(protocol.parse_client_message(event.text))
            return True
        return self._control(event)

    def _control(self, event: Event) -> bool:
        """Answer a control frame; ``False`` for the close that completes the handshake."""
        if event.kind == "ping":
            self.enqueue(encode_frame(OP_PONG, event.payload))
        elif event.kind == "pong":
            self.awaiting_pong_since = None
        elif event.kind == "close":
            if self.closing is None:
                # Echo the client's (validated) code, as RFC 6455 5.5.1 suggests.
                code = event.close_code or closecodes.NORMAL.code
                echo = closecodes.BY_CODE.get(code) or closecodes.CloseCode(
                    code, f"CLIENT_{code}", "client closed", "no")
                self.close(echo, "client closed")
            return False
        return True

    def _handle(self, message: dict[str, Any]) -> None:
        if self.session.auth_timer is not None:
            self.session.authenticate_message(self, message)
            return
        kind = message.get("type")
        if kind == protocol.PONG:
            self.awaiting_pong_since = None
        elif kind == protocol.REFRESH:
            self.session.refresh(self, message.get("token"))
        else:
            raise ProtocolViolation(closecodes.POLICY_VIOLATION, "unexpected message type")

    def tick(self, now: float, wall: float) -> None:
        """Heartbeat and token expiry; called by the worker's housekeeping about once a second.

        Also while the listener is away (the connection waits to be attached again): a
        connection never outlives its token, and pings keep the client's watchdog quiet."""
        session = self.session
        if self.closing is not None or not session.user_id or not session.live:
            return
        if wall >= session.expiry_due and session.expire(self, wall):
            return
        if self.awaiting_pong_since is not None and (
            now - self.awaiting_pong_since > self.settings.pong_timeout
        ) and not self._unread_input():
            self.node.count("heartbeat_timeout")
            self.close(closecodes.HEARTBEAT_TIMEOUT, "no pong in time")
            return
        if now >= self.next_ping:
            self.next_ping = now + self.settings.ping_interval
            if self.awaiting_pong_since is None:
                self.awaiting_pong_since = now
            self.enqueue(_PING)

    def _unread_input(self) -> bool:
        """Whether the client sent bytes that this worker has not read yet.

        A worker held up for seconds (a storm of handshakes on a starved CPU, a long
        collection) still runs its timers on time, while the greenlets that read its clients
        wait their turn: its heartbeat check must not close a client whose pong is waiting in
        the socket (bench scale, 75,000 connections on a starved machine: 70,000 closed 4011
        within half a minute). One non-blocking peek, only for a connection about to be
        closed."""
        if self._input.pending:
            return True
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except OSError:  # nothing to read (EAGAIN), or the socket is gone: no pong either
            return False
        finally:
            self.sock.settimeout(timeout)

    def _linger(self) -> None:
        """After our close frame: read until the client's close frame or the timeout."""
        try:
            while True:
                if self.reader.next_event().kind == "close":
                    return
        except ProtocolViolation:
            # Frames no more, but bytes (a bounded amount) until the client ends the stream:
            # closing with unread input sends a reset at once, which destroys our close frame
            # if it has not left yet (seen behind the answers to a ping flood).
            left = LINGER_DRAIN_BYTES
            try:
                while left > 0:
                    data = self.sock.recv(65536)
                    if not data:
                        break
                    left -= len(data)
            except OSError:
                pass
        except (ConnectionEnded, OSError):
            return

    def _finish(self) -> None:
        self.session.leave_pending()
        self.session.stop_auth_timer()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self._writer.wait(CLOSE_HANDSHAKE_TIMEOUT)
        if self._abort_timer is not None:
            self._abort_timer.close()
            self._abort_timer = None
        self.closed = True
        self.node.detach(self)
        try:
            self.sock.close()
        except OSError:
            pass
        code = self.closing.code if self.closing else closecodes.ABNORMAL_CLOSURE
        # The access line of a WebSocket is written at its 101; this one carries how long it
        # lived. During a drain one line per client was a fifth of the worker's CPU (py-spy,
        # 20,000 closes a worker): the drain logs their sum instead (node.drain).
        level = logging.DEBUG if self.node.draining else logging.INFO
        if log.isEnabledFor(level):
            seconds = round(time.monotonic() - self.opened_at, 3)
            log.log(level, "closed user=%s peer=%s code=%s reason=%s after %.1fs", self.user_id
                    or "-", self.peer, code, self.close_detail or "connection lost", seconds,
                    extra={"user": self.user_id or None, "event": "closed", "code": code,
                           "seconds": seconds})
        if self._finished is not None:
            self._finished.set()
