"""The listener's side of the workers: the Unix socket they connect to, and their frames.

``Workers`` accepts each worker on the listener's socket (only relay's own user: a private
0700 directory and ``SO_PEERCRED``), keeps one ``WorkerPeer`` each and reads its frames
(``bus`` framing): ``HELLO``, ``ATTACH`` and ``DETACH`` of its connections, ``COUNTERS`` and
``STATS``. It refuses an attach whose token a revocation voids or whose user is at
``RELAY_MAX_CONNECTIONS_PER_USER``, counts the others per user, and hands their channels to
``Subscriptions`` (the ``Wants`` below), which answers them. It keeps relay_revoke()'s
revocations and tells every worker of each. The ``Listener`` wires it and pushes the figures.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import gevent

from relay import bus, closecodes, listener_socket
from relay.channels import valid_channel
from relay.config import Settings
from relay.listener.peers import WorkerPeer, WorkerPeers, str_field, str_list
from relay.listener.refcounts import release
from relay.listener.stats import WorkerTotals

log = logging.getLogger("relay.listener")

EXIT_OUTDATED = 75  # a newer worker said hello: the supervisor starts the new code


class Wants(Protocol):
    """Where the workers' connections' channels go (``Subscriptions``)."""

    def attach(self, peer: WorkerPeer, request: dict[str, Any], channels: list[str]) -> None:
        """A connection counted on ``peer`` wants ``channels``: answer ``request`` once
        they are heard."""
        ...

    def unwant(self, channels: list[str], count: int = 1) -> None: ...

    def forget(self, peer: WorkerPeer) -> None:
        """``peer`` is gone: drop its attaches still waiting."""
        ...


class Workers:
    def __init__(self, settings: Settings, peers: WorkerPeers, wants: Wants,
                 stats: Callable[[], dict[str, Any]], push_stats: Callable[[], None]) -> None:
        self.settings = settings
        self._peers = peers  # the connected workers: this object alone adds and removes
        self._wants = wants
        self._stats = stats
        self._push_stats = push_stats
        self._users: Counter[str] = Counter()  # user → connections over all workers
        self._connections = 0  # the sum of _users' values, kept as they change
        self._peer_numbers = 0
        self._worker_totals = WorkerTotals()
        # relay_revoke(): user → time (epoch seconds) before which their tokens are void.
        self._revoked: dict[str, float] = {}
        self._revoked_swept = 0.0

    def bind(self) -> socket.socket:
        """The listening socket at ``RELAY_SOCKET_PATH``, only this user's to talk to."""
        path = self.settings.socket_path
        listener_socket.claim(path)  # a squatted or live path is refused, never replaced
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # only this user may talk to the listener
        try:
            server.bind(path)
        finally:
            os.umask(old_umask)
        server.listen(256)
        return server

    def accept_forever(self, server: socket.socket) -> None:
        while True:
            sock, _ = server.accept()
            if not listener_socket.is_own_user(sock):
                pid, uid = listener_socket.peer(sock)
                log.error("refused a connection from pid %s of uid %s: the worker socket "
                          "serves only relay's own user", pid, uid)
                sock.close()
                continue
            self._peer_numbers += 1
            peer = WorkerPeer(sock, self._peer_numbers, self._peers.routes)
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
            self._check_version(peer, message.get("bus", 1))
            log.info("worker %s connected", peer.pid)
            if self._revoked:  # before anything it attaches is answered
                peer.send(bus.encode(bus.REVOKED, {"revoked": self._revoked}))
            self._push_stats()  # its /health works at once, and the others count it
        elif kind == bus.ATTACH:
            self._attach(peer, message)
        elif kind == bus.DETACH:
            self._detach(peer, str_field(message.get("user")),
                         str_list(message.get("channels")))
        elif kind == bus.COUNTERS:
            peer.report(message)
        elif kind == bus.STATS:
            peer.send(bus.encode(bus.STATS_REPLY, {**self._stats(), "req": message.get("req")}))
        else:
            raise bus.BusProtocolError(f"kind {kind} is not for the listener")

    def _check_version(self, peer: WorkerPeer, version: object) -> None:
        """Workers and listener of one release speak one wire. A newer worker means relay was
        upgraded in place and reloaded with HUP, which restarts the workers only: this
        listener exits, and the supervisor starts one of the new code (clients resume from
        the outbox, or resync with the history in memory). An older one is refused."""
        if version == bus.VERSION:
            return
        if isinstance(version, int) and version > bus.VERSION:
            log.error("worker %s speaks wire version %s, this listener %s: relay's code was "
                      "upgraded under it (a HUP reloads the workers only); the listener "
                      "restarts to load it", peer.pid, version, bus.VERSION)
            logging.shutdown()
            os._exit(EXIT_OUTDATED)
        raise bus.BusProtocolError(
            f"wire version {version!r}, this listener's is {bus.VERSION}: a worker of another "
            "release (restart relay so that its workers and listener are one release)")

    def _attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        user = str_field(request.get("user"))
        channels = str_list(request.get("channels"))
        if not user or not channels:
            raise bus.BusProtocolError("attach without user or channels")
        if not all(valid_channel(channel) for channel in channels):
            # A worker only sends channels_for()'s names; an empty one would make every LISTEN
            # a syntax error, and the database link reconnect for ever.
            raise bus.BusProtocolError("attach with an invalid channel name")
        revoked = self._revoked.get(user)
        issued = request.get("iat")
        if revoked is not None and not (isinstance(issued, (int, float)) and issued >= revoked):
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False,
                "code": closecodes.UNAUTHORIZED.code, "reason": "token revoked"}))
            return
        if self._users[user] >= self.settings.max_connections_per_user:
            refusal = closecodes.TOO_MANY_CONNECTIONS
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False, "code": refusal.code,
                "reason": refusal.reason}))
            return
        # Count the connection now, so that the channel is wanted and a concurrent detach
        # of the same user's last other connection does not close it under us.
        peer.attach(user, channels)
        self._users[user] += 1
        self._connections += 1
        self._wants.attach(peer, request, channels)

    def _detach(self, peer: WorkerPeer, user: str, channels: list[str]) -> None:
        held = peer.detach(user, channels)
        if held is None:
            return
        release(self._users, user)
        self._connections -= 1
        self._wants.unwant(held)

    def _forget(self, peer: WorkerPeer) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        peer.close()
        self._worker_totals.retire(peer.counters)
        log.info("worker %s disconnected", peer.pid)
        self._wants.forget(peer)
        for user, count in peer.users.items():
            release(self._users, user, count)
            self._connections -= count
        for channel, count in peer.channels.items():
            self._wants.unwant([channel], count)
        self._push_stats()

    def revoke(self, revoked: dict[str, float]) -> None:
        """Remember each user's latest revocation, and tell every worker (which closes the
        connections whose tokens it voids). Attaches are checked here, in the stream's order,
        so a connection is either refused or attached before the workers hear of it."""
        changed = {user: at for user, at in revoked.items()
                   if at > self._revoked.get(user, float("-inf"))}
        if not changed:
            return
        self._revoked.update(changed)
        frame = bus.encode(bus.REVOKED, {"revoked": changed})
        for peer in self._peers:
            peer.send(frame)

    def forget_old_revocations(self) -> None:
        """A revocation older than the longest token lifetime voids nothing any more."""
        cap = self.settings.max_token_lifetime
        now = time.time()
        if cap and self._revoked and now - self._revoked_swept > 60:
            self._revoked_swept = now
            horizon = now - cap - 60
            self._revoked = {u: at for u, at in self._revoked.items() if at > horizon}

    def figures(self) -> dict[str, Any]:
        """Its part of the instance's figures (``Listener.stats``)."""
        return {
            "connectedUsers": len(self._users),
            "totalConnections": self._connections,
            "workers": len(self._peers),
            **self._worker_totals.sum(peer.counters for peer in self._peers),
        }
