"""The listener process: the instance's one PostgreSQL connection, fanned out to workers.

Started (and restarted) by ``supervisor``; never by hand. It owns:

* ``DatabaseLink`` — the single autocommit LISTEN connection: keepalives, a periodic
  health query with a timeout, reconnect forever with capped jittered backoff, and
  re-LISTEN of every wanted channel *before* workers are told to resync (traps 5, 6).
* ``Listener`` — the Unix-socket server the workers connect to (``bus`` framing), the
  cross-worker reference counts that decide what to LISTEN/UNLISTEN (with a linger), the
  per-channel sequence numbers and history (``history``), and the instance-wide counts
  that ``/health`` reports.

Every notification is encoded once as the client ``update`` message and the same bytes go
to each worker that has a subscriber for the channel.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter, deque
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.select
import orjson
import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from relay import bus, listener_socket
from relay.channels import table_of, valid_channel
from relay.config import Settings
from relay.listener.history import History
from relay.listener.resolve import libpq_address

log = logging.getLogger("relay.listener")

# A worker that does not read for this long (its queue over this many bytes) is dropped;
# it reconnects and its clients resync. Workers are local and normally drain in microseconds.
_WORKER_QUEUE_LIMIT = 64 << 20
_COALESCE_SECONDS = 0.001
# Channels per LISTEN/UNLISTEN round trip: after a reconnect thousands of channels are
# LISTENed again, and one round trip each would delay the resync by seconds over a WAN.
_LISTEN_BATCH = 500
# The least a database connection must have lived for its loss to reset the reconnect
# backoff (see DatabaseLink.run).
_HEALTHY_SECONDS = 5.0
_WS_HEADER_BYTES = 10  # the most a server text frame adds to a message
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   float("inf"))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON for browsers


def encode_update(channel: str, payload: str, cursor_stream: str, seq: int) -> bytes:
    """The client ``update`` message for one notification, as sent on the wire.

    The payload is validated as JSON and spliced in, not re-serialised. orjson takes the
    common case (a quarter of the standard library's time; bench burst); a payload it refuses
    (NaN, lone surrogates, out-of-range numbers, not JSON) takes the standard library's path,
    so what is accepted, and the bytes sent, are unchanged.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _encode_update_stdlib(channel, payload, cursor_stream, seq)
    table = data.get("table") if isinstance(data, dict) else None
    head = orjson.dumps({
        "type": "update",
        "table": table if isinstance(table, str) and table else table_of(channel),
        "channel": channel,
        "seq": seq,
        "cursor": f"{cursor_stream}:{seq}",
    })
    return b"".join((head[:-1], b',"data":', payload.strip().encode(), b"}"))


def _encode_update_stdlib(channel: str, payload: str, cursor_stream: str, seq: int) -> bytes:
    table = None
    data_text: str
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
        data_text = payload.strip()
        if isinstance(data, dict) and isinstance(data.get("table"), str):
            table = data["table"]
    except (ValueError, RecursionError):
        data_text = json.dumps(payload, ensure_ascii=False)
    head = json.dumps(
        {
            "type": "update",
            "table": table or table_of(channel),
            "channel": channel,
            "seq": seq,
            "cursor": f"{cursor_stream}:{seq}",
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f'{head[:-1]},"data":{data_text}}}'.encode()


class WorkerPeer:
    """One connected worker: its socket, outbound queue and what it has attached."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.pid = 0
        self.counters: dict[str, Any] = {}  # the worker's latest COUNTERS snapshot
        self.users: Counter[str] = Counter()  # user → connections on this worker
        self.channels: Counter[str] = Counter()  # channel → connections on this worker
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = gevent.event.Event()
        self.closed = False

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > _WORKER_QUEUE_LIMIT:
            log.error("worker %s is not reading; dropping it", self.pid)
            self.close()
            return
        self._wakeup.set()

    def writer(self) -> None:
        last_flush = 0.0
        try:
            while not self.closed:
                self._wakeup.wait()
                if time.monotonic() - last_flush < _COALESCE_SECONDS:
                    # Busy: let a little more gather, so that a flood of small transactions
                    # costs the worker one wake-up per millisecond, not one per transaction.
                    gevent.sleep(_COALESCE_SECONDS)
                self._wakeup.clear()
                last_flush = time.monotonic()
                while self._queue:
                    batch = b"".join(self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                    self.sock.sendall(batch)
        except OSError:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wakeup.set()
            try:
                self.sock.close()
            except OSError:
                pass


class DatabaseLink:
    """Owns the PostgreSQL connection. Only its own greenlet ever touches ``conn``."""

    def __init__(self, settings: Settings, listener: Listener) -> None:
        self.settings = settings
        self.listener = listener
        self.conn: psycopg2.extensions.connection | None = None
        self.listening: set[str] = set()
        self.connected = gevent.event.Event()
        self.reconnects = 0
        self._synced_version = -1  # the listener's wanted_version at the last sync
        # While re-LISTENing after a (re)connect, notifications wait here: they go out after
        # the RESYNC, so that a client never sees an update of the new epoch before it.
        self._held: list[tuple[str, str]] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def run(self) -> None:
        delay = 0.0
        first = True
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
            self.listener.on_database_up(first)
            first = False
            try:
                self._serve()
            except (Exception, gevent.Timeout) as exc:  # Timeout is a BaseException
                log.error("database connection lost: %s", _describe(exc))
            self._drop()
            self.reconnects += 1
            self.listener.on_database_down()
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
        self.conn = conn
        self.listening = set()
        log.info("database connected (backend pid %s)", conn.get_backend_pid())

    def _drop(self) -> None:
        self.connected.clear()
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = None
        self.listening = set()

    def _execute(self, statement: sql.Composable | str, drain: bool = True) -> None:
        assert self.conn is not None
        with gevent.Timeout(self.settings.db_check_timeout):
            with self.conn.cursor() as cur:
                cur.execute(statement)
        if drain:
            self._drain()  # trap 5: notifications arrive with any query result

    def _drain(self) -> None:
        assert self.conn is not None
        notifies = self.conn.notifies
        while notifies:
            note = notifies.pop(0)
            if note.channel not in self.listening:
                continue
            if self._held is not None:
                self._held.append((note.channel, note.payload))
            else:
                self.listener.on_notification(note.channel, note.payload)

    def _sync_channels(self) -> None:
        self._synced_version = self.listener.wanted_version
        wanted = self.listener.wanted_channels()
        gone = sorted(self.listening - wanted)
        # Out of `listening` before the UNLISTEN is sent: an attach that wants one of them
        # again meanwhile waits for the next sync (which LISTENs it afresh) instead of being
        # answered on a channel about to go deaf.
        for channel in gone:
            self.listening.discard(channel)
            self.listener.on_unlistened(channel)
        for batch in _batches(gone):
            self._execute(_statements("UNLISTEN", batch))
        for batch in _batches(sorted(wanted - self.listening)):
            self._execute(_statements("LISTEN", batch), drain=False)
            for channel in batch:
                self.listening.add(channel)
                self.listener.on_listening(channel)
            self._drain()  # what arrived with the answer was committed after the LISTEN

    def _check_listen_works(self) -> None:
        """A NOTIFY to ourselves must come back: through a transaction-mode pooler it never
        does (trap 9), and relay would then look healthy while delivering nothing."""
        assert self.conn is not None
        channel = f"relay_selfcheck_{os.getpid()}"
        self._execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        with gevent.Timeout(self.settings.db_check_timeout), self.conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, 'check')", (channel,))
        deadline = time.monotonic() + self.settings.db_check_timeout
        while not any(n.channel == channel for n in self.conn.notifies):
            if time.monotonic() > deadline:
                log.error("LISTEN does not deliver notifications on this DATABASE_URL "
                          "(a pooled endpoint?): use the database's direct endpoint")
                raise RuntimeError("LISTEN self-check failed")
            gevent.select.select([self.conn.fileno()], [], [], 0.1)
            self.conn.poll()
        self.conn.notifies[:] = [n for n in self.conn.notifies if n.channel != channel]
        self._execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
        self._drain()

    def _serve(self) -> None:
        assert self.conn is not None
        self._check_listen_works()
        self._held = []
        try:
            self._sync_channels()
            self.connected.set()
            self.listener.on_channels_synced()  # answers waiting attaches, then the RESYNC
        finally:
            held, self._held = self._held, None
        for channel, payload in held:
            if channel in self.listening:
                self.listener.on_notification(channel, payload)
        next_check = time.monotonic() + self.settings.db_check_interval
        fd = self.conn.fileno()
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
                self.conn.poll()
                self._drain()
            # Comparing the wanted set itself would rebuild a set of every channel on each
            # wake-up (44% of the listener's CPU at 20,000 channels, bench steady).
            if self.listener.wanted_version != self._synced_version:
                self._sync_channels()
                self.listener.on_channels_synced()
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


class Listener:
    def __init__(self, settings: Settings, instance_started_at: float | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.instance_started_at = instance_started_at or self.started_at
        self.peers: set[WorkerPeer] = set()
        self.refs: Counter[str] = Counter()  # channel → connections over all workers
        self.user_refs: Counter[str] = Counter()  # user → connections over all workers
        self.lingering: dict[str, float] = {}  # channel → UNLISTEN deadline
        self.wanted_version = 0  # bumped whenever wanted_channels() gains or loses a channel
        self.epoch = secrets.token_hex(3)
        self.history = self._new_history()
        self.db = DatabaseLink(settings, self)
        self._pending: list[tuple[WorkerPeer, dict[str, Any]]] = []
        self._peer_numbers = 0
        self.notifications = 0
        self.deliveries = 0
        # Commit → listener latency of notifications whose payload carries "ts" (the
        # bundled trigger's commit time): cumulative counts per upper bound, for /metrics.
        self.latency_buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_count = 0
        self.latency_sum = 0.0
        # Counters of workers that went away, so that instance totals never go backwards.
        self._retired: dict[str, Counter[str]] = {
            "counters": Counter(), "closes": Counter(), "authFailures": Counter()}

    def _new_history(self) -> History:
        s = self.settings
        return History(self.epoch, s.history_size, s.history_ttl, s.history_max_bytes)

    # ----- what the database link asks -----

    def wanted_channels(self) -> set[str]:
        return set(self.refs) | set(self.lingering)

    def on_listening(self, channel: str) -> None:
        self.history.open(channel)

    def on_unlistened(self, channel: str) -> None:
        self.history.close(channel)

    def on_database_up(self, first: bool) -> None:
        if not first:
            self.epoch = secrets.token_hex(3)
            self.history = self._new_history()

    def on_channels_synced(self) -> None:
        """All wanted channels are LISTENed: answer attaches waiting for that."""
        pending, self._pending = self._pending, []
        for peer, request in pending:
            # An attach that arrived during this sync waits for the next one (its new channels
            # bumped wanted_version): `connected` must never precede the LISTEN.
            if all(ch in self.db.listening for ch in _str_list(request.get("channels"))):
                self._answer_attach(peer, request)
            else:
                self._pending.append((peer, request))
        if self._resync_due:
            self._resync_due = False
            cursors = {ch: self.history.get(ch).cursor for ch in self.db.listening
                       if self.history.get(ch) is not None}
            frame = bus.encode(bus.RESYNC, {"reason": "database reconnected", "cursors": cursors})
            for peer in list(self.peers):
                peer.send(frame)
            log.info("told %d workers to resync %d channels", len(self.peers), len(cursors))

    _resync_due = False

    def on_database_down(self) -> None:
        self._resync_due = True

    def _observe_latency(self, payload: str) -> None:
        marker = payload.rfind('"ts"')
        if marker < 0:
            return
        try:
            text = payload[marker + 4:].lstrip(" :").split(",", 1)[0].split("}", 1)[0]
            latency = max(0.0, time.time() - float(text))
        except ValueError:
            return
        if latency > 3600:
            return
        self.latency_count += 1
        self.latency_sum += latency
        # One bucket per observation (made cumulative in stats()): the loop over every bucket
        # was 5% of the listener's CPU at 22,000 notifications/s (bench steady). The last
        # bound is +Inf, so every finite latency has a bucket.
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1

    def on_notification(self, channel: str, payload: str) -> None:
        self.notifications += 1
        self._observe_latency(payload)
        stream, seq = self.history.next_seq(channel)
        message = encode_update(channel, payload, stream, seq)
        self.history.record(channel, seq, message)
        frame = bus.encode_update(channel, message)
        for peer in self.peers:
            if peer.channels.get(channel):
                peer.send(frame)
                self.deliveries += peer.channels[channel]

    # ----- workers -----

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
        log.info("listener ready on %s (epoch %s)", path, self.epoch)
        gevent.spawn(self.db.run)
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
            self.peers.add(peer)
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
            peer.pid = int(message.get("pid", 0))
            log.info("worker %s connected", peer.pid)
        elif kind == bus.ATTACH:
            self._attach(peer, message)
        elif kind == bus.DETACH:
            self._detach(peer, _str(message.get("user")), _str_list(message.get("channels")))
        elif kind == bus.COUNTERS:
            peer.counters = message
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
        if self.user_refs[user] >= self.settings.max_connections_per_user:
            peer.send(bus.encode(bus.ATTACHED, {
                "req": request.get("req"), "ok": False, "code": 4008,
                "reason": "too many connections"}))
            return
        # Count the connection now, so that the channel is wanted and a concurrent detach
        # of the same user's last other connection does not UNLISTEN it under us.
        peer.users[user] += 1
        self.user_refs[user] += 1
        for channel in channels:
            if channel not in self.refs and channel not in self.lingering:
                self.wanted_version += 1
            peer.channels[channel] += 1
            self.refs[channel] += 1
            self.lingering.pop(channel, None)
        if self.db.connected.is_set() and all(ch in self.db.listening for ch in channels):
            self._answer_attach(peer, request)
        else:
            self._pending.append((peer, request))
            self.db.wake()

    def _answer_attach(self, peer: WorkerPeer, request: dict[str, Any]) -> None:
        if peer.closed:
            return
        channels = _str_list(request.get("channels"))
        resume = request.get("resume") if isinstance(request.get("resume"), dict) else {}
        replay: list[str] = []
        resync: list[str] = []
        reasons: list[str] = []
        # The replay is queued to the client at once: more than its outbound queue could
        # hold would close it 4009 and the same resume would overflow again, for ever.
        budget_bytes = min(self.settings.queue_max_bytes, bus.MAX_FRAME_BYTES) // 2
        budget_messages = self.settings.queue_max_messages // 2
        for channel in channels:
            if channel not in resume:
                continue
            outcome = self.history.replay(channel, resume[channel])
            size = sum(len(m) + _WS_HEADER_BYTES for m in outcome.messages)
            if outcome.resync:
                resync.append(channel)
                reasons.append(outcome.reason)
            elif size > budget_bytes or len(outcome.messages) > budget_messages:
                resync.append(channel)
                reasons.append("too far behind")
            else:
                budget_bytes -= size
                budget_messages -= len(outcome.messages)
                replay.extend(m.decode() for m in outcome.messages)
        cursors = {ch: self.history.get(ch).cursor for ch in channels
                   if self.history.get(ch) is not None}
        answer: dict[str, Any] = {
            "req": request.get("req"), "ok": True, "epoch": self.epoch, "cursors": cursors,
            "replay": replay, "resync": resync}
        if reasons:
            answer["reason"] = reasons[0]
        peer.send(bus.encode(bus.ATTACHED, answer))

    def _detach(self, peer: WorkerPeer, user: str, channels: list[str]) -> None:
        if peer.users.get(user, 0) <= 0:
            return
        _decrement(peer.users, user)
        _decrement(self.user_refs, user)
        for channel in channels:
            if peer.channels.get(channel, 0) <= 0:
                continue
            _decrement(peer.channels, channel)
            _decrement(self.refs, channel)
            if channel not in self.refs:
                self.lingering[channel] = time.monotonic() + self.settings.linger_seconds
        if self.settings.linger_seconds == 0:
            self.db.wake()

    def _forget(self, peer: WorkerPeer) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        peer.close()
        for key, retired in self._retired.items():
            retired.update(peer.counters.get(key) or {})
        log.info("worker %s disconnected", peer.pid)
        self._pending = [(p, r) for p, r in self._pending if p is not peer]
        for user, count in list(peer.users.items()):
            for _ in range(count):
                _decrement(self.user_refs, user)
        now = time.monotonic()
        for channel, count in peer.channels.items():
            for _ in range(count):
                _decrement(self.refs, channel)
            if channel not in self.refs:
                self.lingering[channel] = now + self.settings.linger_seconds

    def _housekeeping(self) -> None:
        while True:
            gevent.sleep(min(1.0, max(0.05, self.settings.linger_seconds / 4)))
            now = time.monotonic()
            expired = [ch for ch, deadline in self.lingering.items() if deadline <= now]
            for channel in expired:
                del self.lingering[channel]
            if expired:
                self.wanted_version += 1
                self.db.wake()
            self.history.expire()

    def stats(self) -> dict[str, Any]:
        return {
            "database": "connected" if self.db.connected.is_set() else "disconnected",
            "connectedUsers": len(self.user_refs),
            "totalConnections": sum(self.user_refs.values()),
            "channels": len(self.db.listening),
            "lingering": len(self.lingering),
            "workers": len(self.peers),
            "epoch": self.epoch,
            "listenerPid": os.getpid(),
            "listenerStartedAt": self.started_at,
            "instanceStartedAt": self.instance_started_at,
            "notifications": self.notifications,
            "deliveries": self.deliveries,
            "databaseReconnects": self.db.reconnects,
            "historyBytes": self.history.total_bytes,
            "latency": {"buckets": list(zip(LATENCY_BUCKETS,
                                            itertools.accumulate(self.latency_buckets),
                                            strict=True)),
                        "count": self.latency_count, "sum": self.latency_sum},
            **self._worker_totals(),
        }

    def _worker_totals(self) -> dict[str, dict[str, int]]:
        totals = {key: Counter(retired) for key, retired in self._retired.items()}
        for peer in self.peers:
            for key, total in totals.items():
                for name, value in (peer.counters.get(key) or {}).items():
                    if isinstance(value, int):
                        total[name] += value
        return {key: dict(total) for key, total in totals.items()}


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


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
