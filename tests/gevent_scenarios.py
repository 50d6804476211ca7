"""Scenarios of a worker's own greenlets, run in a gevent-patched subprocess (as in a worker)
by tests/test_worker_resilience.py: ``python -m tests.gevent_scenarios NAME TMP_DIR`` prints
one JSON line of what happened. The link scenarios talk to a small real listener on a Unix
socket that records the kinds of the frames each link sends."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.server  # noqa: E402

from relay import bus  # noqa: E402
from relay.config import Settings  # noqa: E402
from relay.worker.connection import Connection  # noqa: E402
from relay.worker.link import ListenerLink  # noqa: E402
from relay.worker.node import Node  # noqa: E402
from relay.worker.socket_reader import SocketReader  # noqa: E402


class Handler:
    """A link's handler that ignores what the listener says (no connections here)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class Listener:
    def __init__(self, path: str) -> None:
        self.frames: list[int] = []
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        self.server = gevent.server.StreamServer(sock, self._handle)
        self.server.start()

    def _handle(self, sock: socket.socket, _address: object) -> None:
        reader = bus.FrameReader()
        while data := sock.recv(65536):
            self.frames.extend(kind for kind, _ in reader.feed(data))


def hello_reset(path: str) -> dict[str, Any]:
    """The first connection's peer is already gone when the link sends its HELLO."""
    listener = Listener(path)
    link = ListenerLink(path, Handler())
    real_connect, calls = link._connect, []

    def connect() -> socket.socket:
        calls.append(1)
        if len(calls) > 1:
            return real_connect()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.close()  # a real socket whose peer is gone: sending fails with EPIPE
        return ours

    link._connect = connect  # type: ignore[method-assign]
    link.start()
    connected = link.connected.wait(5)
    gevent.sleep(0.1)
    return {"connected": connected, "connects": len(calls), "hellos": listener.frames.count(
        bus.HELLO)}


def read_bug(path: str) -> dict[str, Any]:
    """Handling the listener's stream raises an unexpected error once."""
    listener = Listener(path)
    link = ListenerLink(path, Handler())
    real_read, reads = link._read, []

    def read(sock: socket.socket) -> None:
        reads.append(1)
        if len(reads) == 1:
            raise KeyError("a bug")
        real_read(sock)

    link._read = read  # type: ignore[method-assign]
    link.start()
    gevent.sleep(0.5)
    return {"connected": link.connected.is_set(), "reads": len(reads),
            "hellos": listener.frames.count(bus.HELLO)}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())


def late_listener(path: str) -> dict[str, Any]:
    """The listener binds its socket 1.5 s after the worker's link starts (as at every
    start: the listener connects to the database first): no warning. A second link to a path
    nobody binds warns once its grace (0.5 s here) is over, and only once."""
    records = _Records()
    logging.getLogger("relay.link").addHandler(records)
    link = ListenerLink(path, Handler())
    link.start()
    absent = ListenerLink(path + ".absent", Handler(), unreachable_warning_after=0.5)
    absent.start()
    gevent.sleep(1.5)
    listener = Listener(path)
    connected = link.connected.wait(5)
    gevent.sleep(1.0)
    return {"connected": connected, "hellos": listener.frames.count(bus.HELLO),
            "warnings": [w.split(" at ")[0] + (" (absent)" if ".absent" in w else "")
                         for w in records.warnings]}


class TickingConnection:
    """What housekeeping needs of a connection; ``broken`` ones raise from ``tick``."""

    def __init__(self, user_id: str, broken: bool) -> None:
        self.user_id, self.broken = user_id, broken
        self.ticks = 0
        self.closed_with: list[int] = []

    def tick(self, now: float, wall: float) -> None:
        self.ticks += 1
        if self.broken:
            raise ZeroDivisionError("a bug")

    def close(self, code: Any, detail: str = "") -> None:
        self.closed_with.append(code.code)


def housekeeping_bug(directory: str) -> dict[str, Any]:
    """One connection's tick raises: the others keep being ticked, that one is closed 1011."""
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_PING_INTERVAL": "1"})
    node = Node(settings)
    broken, healthy = TickingConnection("bug", True), TickingConnection("ok", False)
    for conn in (broken, healthy):
        node.register(conn)  # type: ignore[arg-type]
    gevent.spawn(node._housekeeping)
    gevent.sleep(1.2)
    return {"healthy_ticks": healthy.ticks >= 3, "broken_closed_with": broken.closed_with[:1]}


_PONG = b"\x81\x8f\0\0\0\0" + b'{"type":"pong"}'  # a client's pong, masked with a zero key


def _pinged_connection(node: Node, seconds_ago: float) -> tuple[Connection, socket.socket]:
    """An attached, parked connection over a real socket pair, whose last ping went out
    ``seconds_ago``; and the client's end."""
    ours, theirs = socket.socketpair()
    conn = Connection(node, ours, SocketReader(ours), "test")
    node.register(conn)
    conn.session.user_id = "late"
    conn.session.expires_at = int(time.time()) + 3600
    conn.session.live = True
    conn._park()  # as after its handshake: the hub reads the client when it speaks
    now = time.monotonic()
    conn.awaiting_pong_since = now - seconds_ago
    conn.next_ping = now + 60
    return conn, theirs


def late_pong(directory: str) -> dict[str, Any]:
    """The worker's heartbeat check runs before its reader gets to a pong that has arrived
    (a worker held up: its ready greenlets wait their turn, its timers do not)."""
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_PING_INTERVAL": "1",
        "RELAY_PONG_TIMEOUT": "1"})
    node = Node(settings)
    answered, client = _pinged_connection(node, seconds_ago=2.0)
    client.sendall(_PONG)  # the client did answer, in time; the worker has not read it
    silent, _silent_client = _pinged_connection(node, seconds_ago=2.0)
    now = time.monotonic()
    for conn in (answered, silent):  # no switch in between: the pong is still unread
        conn.tick(now, time.time())
    kept = answered.closing is None
    gevent.sleep(0.2)  # now the reader's turn
    return {"answered_kept": kept, "pong_read": answered.awaiting_pong_since is None,
            "answered_open": answered.closing is None,
            "silent_closed_with": silent.closing.code if silent.closing else None}


def finished_connection_freed(directory: str) -> dict[str, Any]:
    """A connection whose client closed is freed by its reference count alone: nothing of a
    finished connection waits for the cyclic garbage collector, whose full collections walk
    every object a worker holds."""
    import gc
    import weakref

    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock"})
    node = Node(settings)
    gc.disable()
    conn, client = _pinged_connection(node, seconds_ago=0.0)
    gone = weakref.ref(conn)
    del conn
    client.sendall(b"\x88\x82\0\0\0\0\x03\xe8")  # the client's close frame, 1000
    gevent.sleep(0.3)  # read, echoed, finished
    return {"open": len(node.connections), "freed": gone() is None}


def _masked_text(text: bytes, mask: bytes = b"\x1f\x2e\x3d\x4c") -> bytes:
    """A client's text frame, masked as a browser masks it."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes((0x81, 0x80 | len(text))) + mask + masked


def pong_without_greenlet(directory: str) -> dict[str, Any]:
    """A lone canonical pong is taken by the watcher's callback, without a greenlet; any other
    pong goes through the reader; a flood of lone pongs still meets the message rate limit."""
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_CLIENT_MSG_RATE": "2"})
    node = Node(settings)
    spawned: list[object] = []
    real_spawn = gevent.spawn

    def counting_spawn(*args: Any, **kwargs: Any) -> Any:
        spawned.append(args[0])
        return real_spawn(*args, **kwargs)

    gevent.spawn = counting_spawn  # type: ignore[assignment]
    out: dict[str, Any] = {}
    conn, client = _pinged_connection(node, seconds_ago=0.5)
    client.sendall(_masked_text(b'{"type":"pong"}'))
    gevent.sleep(0.1)
    out["canonical"] = {"answered": conn.awaiting_pong_since is None, "greenlets": len(spawned)}
    conn.awaiting_pong_since = time.monotonic()
    client.sendall(_masked_text(b'{"type": "pong"}'))  # another spelling: the reader's
    gevent.sleep(0.1)
    out["spaced"] = {"answered": conn.awaiting_pong_since is None, "greenlets": len(spawned)}
    for _ in range(4):  # a bucket of 2 x 2 tokens, two already taken: the flood ends it
        client.sendall(_masked_text(b'{"type":"pong"}'))
        gevent.sleep(0.05)
    out["flood_closed_with"] = conn.closing.code if conn.closing else None
    gevent.spawn = real_spawn  # type: ignore[assignment]
    return out


class DeafConnection:
    """A client that never answers its close, on a worker so starved that each close takes
    ``cost`` seconds of CPU (a busy loop: the drain's greenlet does not yield meanwhile)."""

    user_id = "deaf"

    def __init__(self, cost: float, next_ping: float = 0.0,
                 order: list[float] | None = None) -> None:
        self.cost = cost
        self.next_ping = next_ping
        self.closed_with: list[int] = []
        self._order = order

    def close(self, code: Any, detail: str = "") -> None:
        if self.closed_with:  # as Connection.close: once
            return
        self.closed_with.append(code.code)
        if self._order is not None:
            self._order.append(self.next_ping)
        until = time.perf_counter() + self.cost
        while time.perf_counter() < until:
            pass


def drain_behind_schedule(directory: str) -> dict[str, Any]:
    """The closes fall behind the drain window (0.5 s for 100 clients; they take 2 s): the
    drain still ends at its window + DRAIN_ANSWER_SECONDS after its start, not 3 s after its
    last close, when nobody answers."""
    from relay.worker.node import DRAIN_ANSWER_SECONDS

    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_DRAIN_SECONDS": "0.5"})
    node = Node(settings)
    conns = [DeafConnection(0.02) for _ in range(100)]
    for conn in conns:
        node.register(conn)  # type: ignore[arg-type]
    started = time.monotonic()
    node.drain()
    return {"closed": sorted({code for conn in conns for code in conn.closed_with}),
            "closes": sum(len(conn.closed_with) for conn in conns),
            "budget": 0.5 + DRAIN_ANSWER_SECONDS,
            "seconds": round(time.monotonic() - started, 2)}


def drain_order(directory: str) -> dict[str, Any]:
    """The drain closes first those whose ping is due first (none pinged during the drain
    when its window is shorter than the ping interval)."""
    import random

    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_DRAIN_SECONDS": "0.2"})
    node = Node(settings)
    order: list[float] = []
    now = time.monotonic()
    for _ in range(200):
        node.register(DeafConnection(0.0, now + random.uniform(0, 20), order))  # type: ignore[arg-type]
    node.drain()
    return {"closed": len(order), "by_next_ping": order == sorted(order)}


class AnsweringConnection:
    """A client that answers its close at once: the connection is finished (detached)
    inside ``close``."""

    user_id = "answers"
    next_ping = 0.0
    channels = ("user_Usage_answers",)

    def __init__(self, node: Node, inside: list[bool]) -> None:
        self.node = node
        self.inside = inside
        self.closed = False

    def close(self, code: Any, detail: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.inside.append(True)
        self.node.detach(self)  # type: ignore[arg-type]
        self.inside.pop()


def drain_releases(directory: str) -> dict[str, Any]:
    """While draining, finished connections are told to the listener a step at a time
    (together), not one by one as each client answers; every one of them is told."""
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_DRAIN_SECONDS": "0.2"})
    node = Node(settings)
    inside: list[bool] = []
    released: list[tuple[int, bool]] = []  # (connection, told while inside its close)
    node._link.release = lambda conn, attached: released.append(  # type: ignore[method-assign]
        (id(conn), bool(inside)))
    conns = [AnsweringConnection(node, inside) for _ in range(50)]
    for conn in conns:
        node.register(conn)  # type: ignore[arg-type]
    node.drain()
    return {"released": len({conn for conn, _ in released}), "told": len(released),
            "inside_a_close": sum(during for _, during in released)}


if __name__ == "__main__":
    name, directory = sys.argv[1], sys.argv[2]
    scenarios = {"hello_reset": hello_reset, "read_bug": read_bug,
                 "late_listener": late_listener,
                 "housekeeping_bug": housekeeping_bug, "late_pong": late_pong,
                 "finished_connection_freed": finished_connection_freed,
                 "pong_without_greenlet": pong_without_greenlet,
                 "drain_behind_schedule": drain_behind_schedule, "drain_order": drain_order,
                 "drain_releases": drain_releases}
    argument = (f"{directory}/listener.sock" if name in ("hello_reset", "read_bug", "late_listener")
                else directory)
    print(json.dumps(scenarios[name](argument)))
