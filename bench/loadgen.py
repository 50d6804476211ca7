"""A load-generator process: many lean WebSocket clients on raw gevent sockets.

Started by ``bench.run`` (``python -m bench.loadgen``), several at once, each on its own
loopback source address. It is driven by JSON lines on stdin and answers each with one JSON
line on stdout. Commands:

* ``open``   — open and hold connections for a list of users (``?token=`` in the URL), each
  counted once its ``connected`` message has arrived;
* ``churn``  — for a while, connect, authenticate, wait for ``connected``, reset; count them;
* ``reset`` / ``stats`` / ``count`` — zero / report / count what the held connections
  received;
* ``storm``  — from now on, a held connection that the server closes (or loses) reconnects
  as the bundled JS client does: after a full-jitter backoff (client/src/backoff.js: the n-th
  wait uniform in [0, min(cap, base·2^n))), with the token in an ``auth`` message that carries
  the connection's ``resume`` cursors; ``storm_status`` counts, ``storm_stop`` disarms and
  reports (reconnects per second, attempts, failures, time each client was away);
* ``close``  — drop every held connection; ``quit``.

The client is written for low CPU per message: no WebSocket library; handshakes in greenlets,
then each held connection is read by a libev watcher's callback (no greenlet), a frame parser
over a ``bytearray`` and ``json.loads`` of each ``update`` only.
Every update's ``data`` carries ``u`` (the user it was meant for), ``n`` (a unique number),
``k`` (``w`` warm-up, ``s`` steady, ``b`` burst, ``p`` probe, ``d`` database cost) and ``ts``
(PostgreSQL's clock when the writer built it), from which the commit→client latency is taken.
Each held connection keeps its channels' cursors (from ``connected``, updates and
``resync``), for a resume, and records how late each ``ping`` came after the previous one
(or after ``connected``): the server's heartbeat, seen from the client.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.fileobject  # noqa: E402
import gevent.pool  # noqa: E402

from bench.clientwire import (  # noqa: E402
    backoff_delay,
    cursors_after,
    loopback_sources,
    masked,
    server_frame,
)
from relay.auth import issue_token  # noqa: E402

_KEY = base64.b64encode(b"relay-bench-key!").decode()
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT on either side
_PONG = b"\x81\x8f\x00\x00\x00\x00" + b'{"type":"pong"}'  # masked with a zero key
_UPDATE = b'{"type":"update"'
_PING = b'{"type":"ping"}'
_PING_INTERVAL = 20.0  # until a `connected` message says otherwise
# Linux: bind() to (address, 0) leaves the port to connect(). A plain bind to port 0 picks
# one by walking the bind hash for a free port, past every socket this process already
# bound to that address: with 13,000 clients held per address that walk was 75% of a load
# generator's CPU in a storm (perf: inet_bind2_bucket_find, inet_bhash2_conflict), and the
# starved generators, not relay, set the storm's rate. connect() picks from the 4-tuples.
_SOURCES = 8  # loopback source addresses per load generator (loopback_sources)
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class HandshakeFailed(Exception):
    """The server did not answer 101, or closed before ``connected``."""


class Received:
    """What the held connections of this process received since the last ``reset``."""

    def __init__(self) -> None:
        self.updates = 0
        self.seen: set[int] = set()
        self.duplicates = 0
        self.misrouted = 0
        self.seq_gaps = 0
        self.by_kind: Counter[str] = Counter()
        self.latencies = array("f")  # steady-phase commit→client latency, milliseconds
        self.worst: dict[int, float] = {}  # tenth of a second → worst latency in it (ms)
        self.arrived: Counter[int] = Counter()  # tenth of a second → updates that arrived
        self.burst_times = array("d")  # when each burst update arrived (epoch seconds)
        self.probes = array("d")  # probe updates: (commit ts, arrival) pairs, epoch seconds
        self.lag = array("f")  # how late a 5 ms sleep woke up (ms): the client's own delay
        # How late each ping came (ms): its gap since the previous ping (or `connected`) less
        # the server's ping interval. The server ticks once a second, so 0…1,000 is on time.
        self.ping_late = array("f")
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.closes: Counter[int] = Counter()
        self.close_first = self.close_last = 0.0  # when the server closed the first / last
        self.other: Counter[str] = Counter()
        self.other_first: dict[str, float] = {}  # message type → first / last arrival
        self.other_last: dict[str, float] = {}

    def report(self) -> dict[str, Any]:
        return {
            "updates": self.updates, "unique": len(self.seen), "duplicates": self.duplicates,
            "misrouted": self.misrouted, "seqGaps": self.seq_gaps,
            "byKind": dict(self.by_kind), "first": self.first, "last": self.last,
            "closes": {str(k): v for k, v in self.closes.items()}, "other": dict(self.other),
            "closeFirst": self.close_first, "closeLast": self.close_last,
            "latencies": base64.b64encode(self.latencies.tobytes()).decode(),
            "worst": self.worst, "arrived": dict(self.arrived),
            "burstTimes": base64.b64encode(self.burst_times.tobytes()).decode(),
            "probes": base64.b64encode(self.probes.tobytes()).decode(),
            "pingLateMs": base64.b64encode(self.ping_late.tobytes()).decode(),
            "otherFirst": self.other_first, "otherLast": self.other_last,
            "lagMs": _summary(self.lag),
        }


class HeldConnection:
    __slots__ = ("key", "sock", "user", "buffer", "watcher", "cursors", "heard", "closing")

    def __init__(self, key: int, sock: socket.socket, user: str, pending: bytes,
                 cursors: dict[str, str]) -> None:
        self.key = key
        self.sock = sock
        self.user = user
        self.buffer = bytearray(pending)
        self.watcher: Any = None
        self.cursors = cursors  # channel → the last cursor seen: what a resume sends
        self.heard = time.time()  # `connected` or the last ping
        self.closing = 0  # the server's close code, echoed; the socket ends at its EOF


class Storm:
    """The reconnections of one ``storm`` command: every server-side loss is retried with
    the JS client's backoff until it is connected again (or the storm is stopped)."""

    def __init__(self, base: float, cap: float, timeout: float, seed: int,
                 answer_timeout: float) -> None:
        self.base = base
        self.cap = cap
        self.timeout = timeout  # each wait until the 101
        self.answer_timeout = answer_timeout  # each wait after it, for `connected`
        self.random = random.Random(seed)
        self.armed = True
        self.started = time.time()
        self.dropped = 0  # held connections lost while armed
        self.closes: Counter[int] = Counter()  # how they ended: the server's close code
        self.first_drop = self.last_drop = 0.0
        self.waiting = 0  # reconnects scheduled, not started
        self.in_flight = 0  # handshakes under way
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.reattached = 0
        self.resumed = 0  # `connected` said resumed (else the channels came with a resync)
        self.abandoned = 0  # still away when the storm was stopped
        self.by_second: Counter[int] = Counter()  # reconnects completed per wall-clock second
        self.handshake_ms = array("f")  # successful attempts only
        self.away = array("f")  # seconds from the loss to `connected` again, per client
        self.attempts_needed: Counter[int] = Counter()
        self.first_ok = self.last_ok = 0.0

    def delay(self, attempt: int) -> float:
        """client/src/backoff.js: uniform in [0, min(cap, base * 2^attempt))."""
        return backoff_delay(attempt, self.base, self.cap, self.random.random())

    def status(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "reattached": self.reattached,
                "waiting": self.waiting, "inFlight": self.in_flight, "attempts": self.attempts,
                "firstDrop": self.first_drop, "lastDrop": self.last_drop,
                "closes": {str(k): v for k, v in self.closes.items()}}

    def report(self) -> dict[str, Any]:
        return {**self.status(), "failures": dict(self.failures), "resumed": self.resumed,
                "abandoned": self.abandoned, "firstOk": self.first_ok, "lastOk": self.last_ok,
                "bySecond": {str(k): v for k, v in self.by_second.items()},
                "handshakeMs": base64.b64encode(self.handshake_ms.tobytes()).decode(),
                "awaySeconds": base64.b64encode(self.away.tobytes()).decode(),
                "attemptsNeeded": {str(k): v for k, v in self.attempts_needed.items()}}


class LoadGenerator:
    def __init__(self, host: str, port: int, source: str, secret: bytes) -> None:
        self.host = host
        self.port = port
        # Several loopback source addresses, one per connection in turn: a connection's
        # port is unique per source address (32768–60999: ~28,000), and in a storm each
        # client's previous socket can still hold one (the server's side of a close).
        self.sources = loopback_sources(source, _SOURCES) if source else []
        self._source_turn = 0
        self.secret = secret
        self.held: dict[int, HeldConnection] = {}
        self.received = Received()
        self.last_seq: dict[str, int] = {}
        self.ping_interval = _PING_INTERVAL
        self.storm: Storm | None = None
        self._next_id = 0
        self._tokens: dict[str, str] = {}

    # ----- one connection -----

    def _handshake(self, user: str, token: str, timeout: float,
                   auth: dict[str, Any] | None = None, answer_timeout: float | None = None
                   ) -> tuple[socket.socket, bytes, dict[str, Any]]:
        """Connect, upgrade and wait for ``connected``: the socket, what arrived after it,
        and the ``connected`` message. ``auth``: no token in the URL; this message is sent
        first instead (what the JS client does, with its ``resume`` cursors).
        ``timeout``: for each wait until the 101; ``answer_timeout`` (default the same):
        for each wait after it, as the JS client's watchdog waits for ``connected``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stage = "connecting"  # where a failure happened: did the server do its part?
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            if self.sources:
                self._source_turn += 1
                sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
                sock.bind((self.sources[self._source_turn % len(self.sources)], 0))
            sock.connect((self.host, self.port))
            stage = "awaiting 101"
            query = "" if auth is not None else f"?token={token}"
            sock.sendall((
                f"GET /ws{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    raise HandshakeFailed("closed during the HTTP handshake")
                buf += data
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise HandshakeFailed(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            stage = "awaiting connected"
            if answer_timeout is not None:
                sock.settimeout(answer_timeout)
            if auth is not None:
                sock.sendall(masked(0x1, json.dumps(auth, separators=(",", ":")).encode()))
            frames = bytearray(rest)
            while True:  # the first text frame must be `connected`
                parsed = server_frame(frames)
                if parsed is None:
                    data = sock.recv(4096)
                    if not data:
                        raise HandshakeFailed("closed before connected")
                    frames += data
                    continue
                opcode, payload, used = parsed
                del frames[:used]
                if opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    raise HandshakeFailed(f"closed with {code}")
                if opcode == 0x1 and b'"connected"' in payload:
                    sock.settimeout(None)
                    return sock, bytes(frames), json.loads(payload)
        except OSError as exc:
            _reset(sock)
            raise HandshakeFailed(f"{_reason(exc)} {stage}") from exc
        except HandshakeFailed:
            _reset(sock)
            raise
        except BaseException:
            sock.close()
            raise

    def _hold(self, sock: socket.socket, user: str, pending: bytes,
              cursors: dict[str, str]) -> None:
        """Read a held connection from a libev watcher's callback, not from a greenlet.

        The callback runs in the hub when the socket is readable: one non-blocking recv, the
        frames parsed in place. A reader greenlet per connection cost two switches and a
        wasted EAGAIN recv per update: about half of the client's CPU.
        """
        self._next_id += 1
        key = self._next_id
        sock.settimeout(0.0)
        held = HeldConnection(key, sock, user, pending, cursors)
        watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        held.watcher = watcher
        self.held[key] = held
        watcher.start(self._readable, held)
        if pending:
            self._parse(held, time.time())

    def _readable(self, held: HeldConnection) -> None:
        try:
            data = held.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(held, held.closing or 1006)
            return
        held.buffer += data
        self._parse(held, time.time())

    def _parse(self, held: HeldConnection, now: float) -> None:
        buf = held.buffer
        while True:
            parsed = server_frame(buf)
            if parsed is None:
                return
            opcode, payload, used = parsed
            del buf[:used]
            if opcode == 0x1:
                if payload.startswith(_UPDATE):
                    self._update(payload, held, now)
                elif payload == _PING:
                    self.received.ping_late.append(
                        (now - held.heard - self.ping_interval) * 1000.0)
                    held.heard = now
                    self._send(held, _PONG)
                else:
                    self._other(json.loads(payload), held, now)
            elif opcode == 0x9:  # a protocol-level ping (the node-ws peer sends them)
                self._send(held, bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.storm is not None and self.storm.armed:
                    # As a browser does: echo the close and let the server end the TCP
                    # connection first (RFC 6455 7.1.1), so that no TIME_WAIT holds our port.
                    if not held.closing:
                        held.closing = code
                        self._send(held, masked(0x8, payload[:2]))
                    return
                self._drop(held, code)
                return

    def _other(self, message: dict[str, Any], held: HeldConnection, now: float) -> None:
        kind = message.get("type", "?")
        got = self.received
        got.other[kind] += 1
        got.other_first.setdefault(kind, now)
        got.other_last[kind] = now
        if kind == "resync":
            held.cursors.update(message.get("cursors") or {})

    def _send(self, held: HeldConnection, data: bytes) -> None:
        try:
            held.sock.send(data)  # a few bytes: the socket buffer always has room
        except OSError:
            self._drop(held, 1006)

    def _drop(self, held: HeldConnection, code: int) -> None:
        if self.held.pop(held.key, None) is None:
            return
        self.received.closes[code] += 1
        if code:
            now = time.time()
            self.received.close_first = self.received.close_first or now
            self.received.close_last = now
        if held.watcher is not None:
            held.watcher.stop()
            held.watcher.close()
        held.sock.close()
        storm = self.storm
        if storm is not None and storm.armed and code:
            now = time.time()
            storm.dropped += 1
            storm.closes[code] += 1
            storm.first_drop = storm.first_drop or now
            storm.last_drop = now
            self._schedule(storm, held.user, held.cursors, 0, now)

    # ----- the reconnect storm -----

    def _schedule(self, storm: Storm, user: str, cursors: dict[str, str], attempt: int,
                  dropped_at: float) -> None:
        storm.waiting += 1
        gevent.spawn_later(storm.delay(attempt), self._reconnect, storm, user, cursors,
                           attempt + 1, dropped_at)

    def _reconnect(self, storm: Storm, user: str, cursors: dict[str, str], attempt: int,
                   dropped_at: float) -> None:
        storm.waiting -= 1
        if not storm.armed:
            storm.abandoned += 1
            return
        storm.attempts += 1
        storm.in_flight += 1
        # The JS client sends the token in its first message, with the cursors it holds.
        auth = {"type": "auth", "token": self._token(user)}
        if cursors:
            auth["resume"] = dict(cursors)
        started = time.monotonic()
        try:
            sock, pending, connected = self._handshake(user, "", storm.timeout, auth,
                                                            storm.answer_timeout)
        except (OSError, HandshakeFailed) as exc:
            storm.failures[_reason(exc)] += 1
            self._schedule(storm, user, cursors, attempt, dropped_at)
            return
        finally:
            storm.in_flight -= 1
        if not storm.armed:  # stopped while this handshake was under way: not held
            storm.abandoned += 1
            sock.close()
            return
        now = time.time()
        storm.reattached += 1
        storm.by_second[int(now)] += 1
        storm.handshake_ms.append((time.monotonic() - started) * 1000.0)
        storm.away.append(now - dropped_at)
        storm.attempts_needed[attempt] += 1
        storm.first_ok = storm.first_ok or now
        storm.last_ok = now
        if connected.get("resumed"):
            storm.resumed += 1
        self._hold(sock, user, pending, cursors_after(connected, cursors))

    def _token(self, user: str) -> str:
        """The user's token, minted once (valid two hours): a browser gets it from the app's
        own server, whose CPU is not the client's, and a storm's retries would mint it again
        and again on the load generator's."""
        token = self._tokens.get(user)
        if token is None:
            token = self._tokens[user] = issue_token(user, self.secret, 7200)
        return token

    def _update(self, payload: bytes, held: HeldConnection, now: float) -> None:
        got = self.received
        user = held.user
        message = json.loads(payload)
        data = message["data"]
        got.updates += 1
        kind = data.get("k", "?")
        got.by_kind[kind] += 1
        number = data.get("n")
        if number in got.seen:
            got.duplicates += 1
        else:
            got.seen.add(number)
        if str(data.get("u")) != user:
            got.misrouted += 1
        channel = message.get("channel", "")
        seq = message.get("seq")
        cursor = message.get("cursor")
        if cursor:
            held.cursors[channel] = cursor
        last = self.last_seq.get(channel)
        if last is not None and seq != last + 1:
            got.seq_gaps += 1
        self.last_seq[channel] = seq
        tenth = int(now * 10)
        got.arrived[tenth] += 1
        if kind == "s":
            latency = (now - float(data["ts"])) * 1000.0
            got.latencies.append(latency)
            if latency > got.worst.get(tenth, 0.0):
                got.worst[tenth] = latency
        elif kind == "b":
            got.burst_times.append(now)
        elif kind == "p":
            got.probes.append(float(data["ts"]))
            got.probes.append(now)
        if kind not in got.first:
            got.first[kind] = now
        got.last[kind] = now

    def monitor_lag(self) -> None:
        """Sleep 5 ms again and again; lateness is time every client of this process lost."""
        while True:
            started = time.monotonic()
            gevent.sleep(0.005)
            self.received.lag.append((time.monotonic() - started - 0.005) * 1000.0)

    # ----- commands -----

    def open(self, users: list[str], concurrency: int, timeout: float) -> dict[str, Any]:
        tokens = [(user, issue_token(user, self.secret, 7200)) for user in users]
        failures: Counter[str] = Counter()
        durations = array("f")

        def one(item: tuple[str, str]) -> None:
            user, token = item
            started = time.monotonic()
            try:
                sock, pending, connected = self._handshake(user, token, timeout)
            except (OSError, HandshakeFailed) as exc:
                failures[_reason(exc)] += 1
                return
            durations.append((time.monotonic() - started) * 1000.0)
            if isinstance(connected.get("pingInterval"), (int, float)):
                self.ping_interval = float(connected["pingInterval"])
            self._hold(sock, user, pending, cursors_after(connected, {}))

        started = time.monotonic()
        cpu0 = os.times()
        gevent.pool.Pool(concurrency).map(one, tokens)
        return {"opened": len(durations), "failures": dict(failures),
                "seconds": time.monotonic() - started, "cpu": _cpu_since(cpu0),
                "handshakeMs": _summary(durations)}

    def churn(self, users: list[str], concurrency: int, duration: float,
              timeout: float) -> dict[str, Any]:
        tokens = [(user, issue_token(user, self.secret, 7200)) for user in users]
        failures: Counter[str] = Counter()
        durations = array("f")
        deadline = time.monotonic() + duration

        def loop(index: int) -> None:
            position = index
            while time.monotonic() < deadline:
                user, token = tokens[position % len(tokens)]
                position += concurrency
                started = time.monotonic()
                try:
                    sock, _, _ = self._handshake(user, token, timeout)
                except (OSError, HandshakeFailed) as exc:
                    failures[_reason(exc)] += 1
                    gevent.sleep(0.01)
                    continue
                if time.monotonic() <= deadline:
                    durations.append((time.monotonic() - started) * 1000.0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.close()

        started = time.monotonic()
        cpu0 = os.times()
        gevent.joinall([gevent.spawn(loop, i) for i in range(concurrency)])
        return {"handshakes": len(durations), "failures": dict(failures),
                "seconds": time.monotonic() - started, "cpu": _cpu_since(cpu0),
                "handshakeMs": _summary(durations)}

    def close(self) -> dict[str, Any]:
        held = list(self.held.values())
        for conn in held:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            self._drop(conn, 0)
        self.received.closes.pop(0, None)  # closed by us, not by the server
        return {"closed": len(held)}

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command["cmd"]
        if name == "open":
            return self.open(command["users"], command.get("concurrency", 200),
                             command.get("timeout", 30.0))
        if name == "churn":
            return self.churn(command["users"], command.get("concurrency", 50),
                              command["duration"], command.get("timeout", 30.0))
        if name == "reset":
            self.received = Received()
            self.last_seq = {}
            return {"held": len(self.held)}
        if name == "stats":
            return {"held": len(self.held), **self.received.report()}
        if name == "count":
            return {"held": len(self.held), "byKind": dict(self.received.by_kind),
                    "other": dict(self.received.other)}
        if name == "storm":
            self.storm = Storm(command.get("base", 0.5), command.get("cap", 30.0),
                               command.get("timeout", 30.0), command.get("seed", 1),
                               command.get("answerTimeout", 30.0))
            return {"held": len(self.held)}
        if name == "storm_status":
            status = self.storm.status() if self.storm is not None else {}
            return {"held": len(self.held), **status}
        if name == "storm_stop":
            storm, self.storm = self.storm, None
            if storm is None:
                return {"held": len(self.held)}
            storm.armed = False
            return {"held": len(self.held), **storm.report()}
        if name == "close":
            return self.close()
        raise ValueError(f"unknown command {name!r}")


def _reset(sock: socket.socket) -> None:
    """Close a failed attempt with a RST: a plain close leaves the port in TIME_WAIT for a
    minute on this side (at 13,000 clients per address, 5,000 of them in a storm), and a
    browser's machine has its own ports, not this process's."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HandshakeFailed):
        return str(exc)[:80]
    return type(exc).__name__ + (f" {exc.errno}" if getattr(exc, "errno", None) else "")


def _cpu_since(before: os.times_result) -> float:
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


def _summary(values: array) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[int(len(ordered) * 0.99)],
            "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="", help="loopback source address to bind")
    args = parser.parse_args()
    secret = os.environ["BENCH_JWT_SECRET"].encode()
    generator = LoadGenerator(args.host, args.port, args.source, secret)
    gevent.spawn(generator.monitor_lag)
    stdin = gevent.fileobject.FileObjectPosix(sys.stdin.fileno(), "r")
    for line in stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            reply = generator.handle(command)
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, which stops
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    generator.close()


if __name__ == "__main__":
    main()
