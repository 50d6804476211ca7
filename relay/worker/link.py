"""A worker's link to the listener process over the Unix-domain socket.

Sends attach/detach/stats requests (``bus`` framing) and reads the listener's stream. The
stream is handled strictly in order in one greenlet, which is what makes delivery exact:
a connection joins the hub at the moment its ``ATTACHED`` answer is read, so every update
after that answer reaches it and none before it does (those are in its replay, if any).

If the listener dies, the link reconnects forever; every attached connection is attached
again and told to resync (the new listener has a new epoch and no history).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from relay import bus, listener_socket
from relay.worker.hub import Hub

if TYPE_CHECKING:
    from relay.worker.connection import Connection

log = logging.getLogger("relay.link")


class _Pending:
    """An ATTACH in flight: its frame (encoded before it is registered, so that a request
    that cannot be encoded never leaves an entry behind) and whose answer it awaits. A
    connection that finishes while its request is in flight on a live listener leaves only a
    small tombstone (``conn`` None) so that the answer is followed by a DETACH; a tombstone
    is dropped with the listener connection it was sent on."""

    __slots__ = ("conn", "frame", "reattach", "user", "channels")

    def __init__(self, conn: Connection | None, frame: bytes, reattach: bool, user: str,
                 channels: list[str]) -> None:
        self.conn = conn
        self.frame = frame
        self.reattach = reattach
        self.user = user
        self.channels = channels


class ListenerLink:
    def __init__(self, socket_path: str, hub: Hub) -> None:
        self.socket_path = socket_path
        self.hub = hub
        self.connected = gevent.event.Event()
        self.reconnects = 0
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._request_of: dict[Connection, int] = {}  # connections with an ATTACH in flight
        self._stats: dict[int, gevent.event.AsyncResult] = {}
        self._out: deque[bytes] = deque()
        self._out_ready = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._orphans: list[Connection] = []

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._writer)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        if self._sock is not None:
            self._sock.close()

    # ----- requests -----

    def attach(self, conn: Connection, resume: dict[str, str], reattach: bool = False) -> None:
        """Ask the listener for ``conn``'s channels; ``conn.on_attached`` runs on the answer."""
        req = next(self._ids)
        channels = list(conn.channels)
        frame = bus.encode(bus.ATTACH, {"req": req, "user": conn.user_id, "channels": channels,
                                        "resume": resume})
        self._pending[req] = _Pending(conn, frame, reattach, conn.user_id, channels)
        self._request_of[conn] = req
        if self.connected.is_set():
            self._send(frame)

    def release(self, conn: Connection) -> None:
        """``conn`` is finished: the listener stops counting it, whatever state it was in."""
        req = self._request_of.pop(conn, None)
        if req is not None:
            pending = self._pending.pop(req)
            if self.connected.is_set():
                # This listener has the ATTACH (or will have it before anything we send
                # next): its answer must be followed by a DETACH, if it counted the connection.
                self._pending[req] = _Pending(None, b"", False, pending.user, pending.channels)
            # Otherwise no listener has it: it would only have been sent to the next one.
        elif conn.attached:
            conn.attached = False
            self._detach(conn.user_id, list(conn.channels))

    def _detach(self, user: str, channels: list[str]) -> None:
        if self.connected.is_set():
            self._send(bus.encode(bus.DETACH, {"user": user, "channels": channels}))

    def in_flight(self) -> int:
        """ATTACH requests awaiting an answer (tombstones included); for tests and /metrics."""
        return len(self._pending)

    def stats(self, timeout: float = 2.0) -> dict[str, Any] | None:
        if not self.connected.is_set():
            return None
        req = next(self._ids)
        result = gevent.event.AsyncResult()
        self._stats[req] = result
        self._send(bus.encode(bus.STATS, {"req": req}))
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            return None
        finally:
            self._stats.pop(req, None)

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
                sock.sendall(bus.encode(bus.HELLO, {"pid": os.getpid()}))
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
                self.reconnects += 1
                log.warning("reconnected to the listener; re-attaching %d connections",
                            len(self.hub.connections))
                for conn in self._orphans:
                    if not conn.closed:
                        self.attach(conn, {}, reattach=True)
                self._orphans = []
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
            self._pending = {req: p for req, p in self._pending.items() if p.conn is not None}
            # No route survives the listener: each connection is attached again, and told to
            # resync, once a new listener answers.
            orphans = self.hub.unroute_all()
            for conn in orphans:
                conn.attached = False
            self._orphans.extend(orphans)
            for result in self._stats.values():
                result.set(None)
            log.warning("lost the listener; reconnecting")

    def _connect(self) -> socket.socket:
        delay = 0.05
        warned = False
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                if not warned and delay >= 0.4:
                    log.warning("listener not reachable at %s (%s); retrying",
                                self.socket_path, exc.strerror)
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
        while True:
            data = sock.recv(262144)
            if not data:
                return
            for kind, body in reader.feed(data):
                if kind == bus.UPDATE:
                    channel, message = bus.decode_update(body)
                    self.hub.publish(channel, message)
                elif kind == bus.ATTACHED:
                    self._on_attached(bus.decode_json(body))
                elif kind == bus.RESYNC:
                    self._on_resync(bus.decode_json(body))
                elif kind == bus.STATS_REPLY:
                    reply = bus.decode_json(body)
                    result = self._stats.get(reply.get("req"))  # type: ignore[arg-type]
                    if result is not None:
                        result.set(reply)
                else:
                    raise bus.BusProtocolError(f"kind {kind} is not for a worker")

    def _on_attached(self, reply: dict[str, Any]) -> None:
        pending = self._pending.pop(reply.get("req"), None)  # type: ignore[arg-type]
        if pending is None:
            return
        conn = pending.conn
        if conn is None:  # finished while in flight
            if reply.get("ok"):
                self._detach(pending.user, pending.channels)
            return
        del self._request_of[conn]
        if not reply.get("ok"):
            conn.on_refused(int(reply.get("code", 1013)), str(reply.get("reason", "")))
            return
        self.hub.add(conn)
        conn.on_attached(reply, pending.reattach)

    def _on_resync(self, message: dict[str, Any]) -> None:
        cursors = message.get("cursors") or {}
        reason = str(message.get("reason", "resync"))
        for conn in list(self.hub.attached()):
            conn.on_resync(reason, {ch: cursors[ch] for ch in conn.channels if ch in cursors})
