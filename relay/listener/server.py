"""The listener process: the instance's one PostgreSQL connection, fanned out to its workers.

Started (and restarted) by ``relay.supervisor`` as ``python -m relay listen``; never by
hand. ``Listener`` is the process's orchestrator: it serves the workers on the listener's
Unix socket (``bus`` framing, one ``WorkerPeer`` each), counts what their connections
attach (``ChannelRefcounts``, which decides what the ``DatabaseLink`` LISTENs), answers
each attach once its channels are LISTENed, with a replay from the ``History`` or a resync,
and routes every notification: the next ``seq`` of its channel, the client ``update``
message encoded once (``relay.protocol``), and the same bytes to each worker that has a
subscriber for the channel. It is the database link's ``DatabaseHandler``.

An **epoch** names one unbroken life of the database connection: after a reconnect, every
channel was deaf for a while (NOTIFY has no replay), so the history starts afresh and the
workers are told to resync.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Set as AbstractSet
from typing import Any

import gevent
import psycopg2.extensions
import psycopg2.extras

from relay import bus, closecodes, listener_socket
from relay.channels import valid_channel
from relay.config import Settings
from relay.listener.database import DatabaseLink
from relay.listener.history import History
from relay.listener.peers import WorkerPeer
from relay.listener.refcounts import ChannelRefcounts, release
from relay.listener.stats import LatencyHistogram, WorkerTotals
from relay.protocol import encode_update

log = logging.getLogger("relay.listener")

_WS_HEADER_BYTES = 10  # the most a server text frame adds to a message


class Listener:
    def __init__(self, settings: Settings, instance_started_at: float | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.instance_started_at = instance_started_at or self.started_at
        self._peers: set[WorkerPeer] = set()
        self._refcounts = ChannelRefcounts(settings.linger_seconds)
        self._users: Counter[str] = Counter()  # user → connections over all workers
        self._epoch = secrets.token_hex(3)
        self._history = self._new_history()
        self._db = DatabaseLink(settings, self)
        self._sessions = 0  # database connections made so far
        self._resync_due = False  # the database came back: tell the workers once synced
        self._pending: list[tuple[WorkerPeer, dict[str, Any]]] = []  # attaches awaiting LISTEN
        self._peer_numbers = 0
        self._notifications = 0
        self._deliveries = 0
        self._latency = LatencyHistogram()
        self._worker_totals = WorkerTotals()

    def _new_history(self) -> History:
        s = self.settings
        return History(self._epoch, s.history_size, s.history_ttl, s.history_max_bytes)

    # ----- the database link's handler -----

    @property
    def wanted_version(self) -> int:
        return self._refcounts.version

    def wanted_channels(self) -> AbstractSet[str]:
        return self._refcounts.wanted()

    def on_connected(self) -> None:
        self._sessions += 1
        if self._sessions > 1:  # a new epoch: nothing before it can be resumed
            self._epoch = secrets.token_hex(3)
            self._history = self._new_history()

    def on_listening(self, channel: str) -> None:
        self._history.open(channel)

    def on_unlistened(self, channel: str) -> None:
        self._history.close(channel)

    def on_synced(self) -> None:
        """Every wanted channel is LISTENed: answer the attaches waiting for that, then (after
        a reconnect) tell the workers to resync."""
        pending, self._pending = self._pending, []
        for peer, request in pending:
            # An attach that arrived during this sync waits for the next one (its new channels
            # bumped the refcounts' version): `connected` must never precede the LISTEN.
            if all(ch in self._db.listening for ch in _str_list(request.get("channels"))):
                self._answer_attach(peer, request)
            else:
                self._pending.append((peer, request))
        if self._resync_due:
            self._resync_due = False
            cursors = self._history.cursors(self._db.listening)
            frame = bus.encode(bus.RESYNC, {"reason": "database reconnected", "cursors": cursors})
            for peer in list(self._peers):
                peer.send(frame)
            log.info("told %d workers to resync %d channels", len(self._peers), len(cursors))

    def on_notification(self, channel: str, payload: str) -> None:
        self._notifications += 1
        self._latency.observe(payload)
        stream, seq = self._history.next_seq(channel)
        message = encode_update(channel, payload, stream, seq)
        self._history.record(channel, seq, message)
        frame = bus.encode_update(channel, message)
        for peer in self._peers:
            subscribers = peer.channels.get(channel)
            if subscribers:
                peer.send(frame)
                self._deliveries += subscribers

    def on_disconnected(self) -> None:
        self._resync_due = True

    # ----- the workers -----

    def serve_forever(self) -> None:
        path = self.settings.socket_path
        listener_socket.claim(path)  # a squatted or live path is refused, never replaced
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # only this user may talk to the listener
        try:
            server.bind(path)
        finally:
            os.umask(old_umask)
        server.listen(256)
        log.info("listener ready on %s (epoch %s)", path, self._epoch)
        gevent.spawn(self._db.run)
        gevent.spawn(self._housekeeping)
        while True:
            sock, _ = server.accept()
            if not listener_socket.is_own_user(sock):
                pid, uid = listener_socket.peer(sock)
                log.error("refused a connection from pid %s of uid %s: the worker socket "
                          "serves only relay's own user", pid, uid)
                sock.close()
                continue
            self._peer_numbers += 1
            peer = WorkerPeer(sock, self._peer_numbers)
            self._peers.add(peer)
            gevent.spawn(peer.writer)
            gevent.spawn(self._read_peer, peer)

    def _read_peer(self, peer: WorkerPeer) -> None:
        reader = bus.FrameReader()
        try:
            while not peer.closed:
                data = peer.sock.recv(65536)
                if not data:
                    break
                for kind, body in reader.feed(data):
                    self._handle(peer, kind, body)
        except (bus.BusProtocolError, ValueError, TypeError, OverflowError) as exc:
            # OverflowError: int() of a JSON 1e999 (infinity), e.g. as a HELLO pid.
            log.error("worker %s sent garbage (%s); dropping it", peer.pid, exc)
        except OSError:
            pass
        finally:
            self._forget(peer)

    def _handle(self, peer: WorkerPeer, kind: int, body: bytes) -> None:
        message = bus.decode_json(body)
        if kind == bus.HELLO:
            peer.hello(int(message.get("pid", 0)))
            log.info("worker %s connected", peer.pid)
        elif kind == bus.ATTACH:
            self._attach(peer, message)
        elif kind == bus.DETACH:
            self._detach(peer, _str(message.get("user")), _str_list(message.get("channels")))
        elif kind == bus.COUNTERS:
            peer.report(message)
        elif kind == bus.STATS:
            peer.send(bus.encode(bus.STATS_REPLY, {"req": message.get("req"), **self.stats()}))
        else:
            raise bus.BusProtocolError(f"kind {kind} is not for the listener")

    def _attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        user = _str(request.get("user"))
        channels = _str_list(request.get("channels"))
        if not user or not channels:
            raise bus.BusProtocolError("attach without user or channels")
        if not all(valid_channel(channel) for channel in channels):
            # A worker only sends channels_for()'s names; an empty one would make every LISTEN
            # a syntax error, and the database link reconnect for ever.
            raise bus.BusProtocolError("attach with an invalid channel name")
        if self._users[user] >= self.settings.max_connections_per_user:
            refusal = closecodes.TOO_MANY_CONNECTIONS
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False, "code": refusal.code,
                "reason": refusal.reason}))
            return
        # Count the connection now, so that the channel is wanted and a concurrent detach
        # of the same user's last other connection does not UNLISTEN it under us.
        peer.attach(user, channels)
        self._users[user] += 1
        self._refcounts.add(channels)
        if self._db.connected and all(ch in self._db.listening for ch in channels):
            self._answer_attach(peer, request)
        else:
            self._pending.append((peer, request))
            self._db.wake()

    def _answer_attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        if peer.closed:
            return
        channels = _str_list(request.get("channels"))
        resume = request.get("resume") if isinstance(request.get("resume"), dict) else {}
        # Half the client's outbound queue at most (see History.resume).
        plan = self._history.resume(
            channels, resume,
            max_bytes=min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2,
            max_messages=self.settings.queue_max_messages // 2, overhead=_WS_HEADER_BYTES)
        answer: dict[str, Any] = {
            "req": request.get("req"), "ok": True, "epoch": self._epoch,
            "cursors": self._history.cursors(channels),
            "replay": [message.decode() for message in plan.replay], "resync": list(plan.resync)}
        if plan.reason:
            answer["reason"] = plan.reason
        peer.send(bus.encode(bus.ATTACHED, answer))

    def _detach(self, peer: WorkerPeer, user: str, channels: list[str]) -> None:
        held = peer.detach(user, channels)
        if held is None:
            return
        release(self._users, user)
        self._unwant(held)

    def _unwant(self, channels: list[str], count: int = 1) -> None:
        version = self._refcounts.version
        self._refcounts.remove(channels, count)
        if self._refcounts.version != version:  # no linger: UNLISTEN now
            self._db.wake()

    def _forget(self, peer: WorkerPeer) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        peer.close()
        self._worker_totals.retire(peer.counters)
        log.info("worker %s disconnected", peer.pid)
        self._pending = [(p, r) for p, r in self._pending if p is not peer]
        for user, count in peer.users.items():
            release(self._users, user, count)
        for channel, count in peer.channels.items():
            self._unwant([channel], count)

    def _housekeeping(self) -> None:
        while True:
            gevent.sleep(min(1.0, max(0.05, self.settings.linger_seconds / 4)))
            if self._refcounts.expire():
                self._db.wake()
            self._history.expire()

    def stats(self) -> dict[str, Any]:
        """The instance's figures, for /health and /metrics (``STATS_REPLY``)."""
        return {
            "database": "connected" if self._db.connected else "disconnected",
            "connectedUsers": len(self._users),
            "totalConnections": sum(self._users.values()),
            "channels": len(self._db.listening),
            "lingering": self._refcounts.lingering,
            "workers": len(self._peers),
            "epoch": self._epoch,
            "listenerPid": os.getpid(),
            "listenerStartedAt": self.started_at,
            "instanceStartedAt": self.instance_started_at,
            "notifications": self._notifications,
            "deliveries": self._deliveries,
            "databaseReconnects": self._db.reconnects,
            "historyBytes": self._history.total_bytes,
            "latency": self._latency.snapshot(),
            **self._worker_totals.sum(peer.counters for peer in self._peers),
        }


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def run_listener(settings: Settings, instance_started_at: float | None = None) -> None:
    """Entry point of the listener process (``python -m relay listen``)."""
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        Listener(settings, instance_started_at).serve_forever()
    except listener_socket.SocketPathError as exc:
        log.error("cannot serve the workers: %s", exc)
        raise SystemExit(1) from None
