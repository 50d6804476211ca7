"""The garbage-collector schedule (relay.collector) of a worker, with real connections, and
of the listener, each run in a gevent-patched subprocess of its own (the collector's state
is the process's) by tests/test_collector.py: ``python -m tests.collector_scenarios NAME
TMP_DIR`` prints one JSON line of what happened."""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import weakref  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from relay.collector import Collector  # noqa: E402
from relay.config import Settings  # noqa: E402
from relay.worker.node import Node  # noqa: E402
from tests.gevent_scenarios import _pinged_connection  # noqa: E402

_CLOSE = b"\x88\x82\0\0\0\0\x03\xe8"  # a client's close frame, 1000, masked with a zero key


def _node(directory: str) -> Node:
    return Node(Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock"}))


def _tracked() -> int:
    """Every object the collector tracks, frozen or not."""
    return len(gc.get_objects()) + gc.get_freeze_count()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _cycles(node: Node, batches: int, size: int) -> None:
    """``batches`` times: ``size`` parked connections, a full collection while they are held
    (its survivors frozen), then every client closes and the worker finishes them."""
    for _ in range(batches):
        held = [_pinged_connection(node, 0.0) for _ in range(size)]
        gc.collect()
        for _conn, client in held:
            client.sendall(_CLOSE)
        for _ in range(200):
            if not node.connections:
                break
            gevent.sleep(0.02)
        for _conn, client in held:
            client.close()
        del held


def survivors_frozen(directory: str) -> dict[str, Any]:
    """What a full collection leaves is frozen: the next one walks none of it."""
    collector = Collector()
    collector.install()
    node = _node(directory)
    held = [_pinged_connection(node, 0.0) for _ in range(2000)]
    gc.collect()
    return {"connections": len(held), "freezes": collector.freezes,
            "walked_by_a_full_collection": len(gc.get_objects()),
            "frozen_per_connection": round(gc.get_freeze_count() / len(held))}


def open_close_cycles(directory: str) -> dict[str, Any]:
    """10,000 connections opened, frozen while held, closed: all of it is freed."""
    collector = Collector()
    collector.install()
    node = _node(directory)
    _cycles(node, batches=4, size=250)  # warm up: the allocator's pools, the first sockets
    tracked, rss = _tracked(), _rss()
    _cycles(node, batches=40, size=250)
    return {"open": len(node.connections), "freezes": collector.freezes,
            "tracked_growth": _tracked() - tracked, "rss_growth_kb": (_rss() - rss) // 1024}


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def frozen_cycle_freed_after_thaw(directory: str) -> dict[str, Any]:
    """A cycle frozen while alive, then dropped: the collector frees it once thawed."""
    collector = Collector()
    collector.install()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.collect()  # frozen with it
    del cycle
    gc.collect()
    kept_while_frozen = gone() is not None
    collector._thaw_at = 0.0  # the thaw is due: the next full collection gives all back
    gc.collect()
    gc.collect()  # walks everything
    return {"kept_while_frozen": kept_while_frozen, "freed_after_thaw": gone() is None,
            "thaws": collector.thaws}


_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")


def handshake_leaves_no_cycles(directory: str) -> dict[str, Any]:
    """WebSocket handshakes through relay's handler and app (a client that upgrades, then
    goes away): what they leave behind is freed by reference counting, none of it waits for
    the cyclic collector."""
    import socket

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from relay.worker.app import create_app
    from relay.worker.handshake import RelayHandler
    from relay.worker.process import RelayServer

    app = create_app(_node(directory).settings, start=False)
    node = app.extensions["relay"].node
    server = RelayServer(("127.0.0.1", 0), app, handler_class=RelayHandler,
                         log=Logger(Config()))
    server.start()

    def handshake() -> bool:
        with socket.create_connection(server.address) as sock:
            sock.sendall(_UPGRADE)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
        return answer.startswith(b"HTTP/1.1 101 ")

    def settle() -> None:
        for _ in range(200):
            if not node.connections:
                break
            gevent.sleep(0.02)
        gevent.sleep(0.1)

    for _ in range(10):  # warm up: first-use caches, the loggers
        handshake()
    settle()
    gc.collect()
    gc.disable()
    upgraded = sum(handshake() for _ in range(100))
    settle()
    found = gc.collect()
    return {"upgraded": upgraded, "open": len(node.connections), "cyclic_garbage": found}


def listener_heap_frozen(directory: str) -> dict[str, Any]:
    """The listener process (``run_listener``, its loop replaced by this scenario) with
    10,000 users' channels counted and a tracked object per channel held (what its histories
    keep): a full collection leaves them frozen, and the counts still free every channel."""
    from relay.listener import server

    result: dict[str, Any] = {}

    def serve(listener: server.Listener) -> None:
        channels = [f"user_Usage_u{i}" for i in range(10_000)]
        listener._refcounts.add(channels)
        held = [[channel, i] for i, channel in enumerate(channels)]
        gc.collect()
        result["walked_by_a_full_collection"] = len(gc.get_objects())
        result["frozen"] = gc.get_freeze_count() >= len(held)
        closed = listener._refcounts.remove(channels)
        result["closed"] = len(closed)
        result["open"] = listener._refcounts.open_count

    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "WEBSOCKET_JWT_SECRET": "s" * 32,
        "RELAY_SOCKET_PATH": f"{directory}/listener.sock", "RELAY_LINGER_SECONDS": "0"})
    server.Listener.serve_forever = serve  # type: ignore[method-assign]
    server.run_listener(settings)
    return result


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](sys.argv[2])))
