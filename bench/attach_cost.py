"""The listener's CPU per resumed attach after a restart: ``python -m bench.attach_cost``.

A reconnect storm's database side without a WebSocket: the real listener process (``python
-m relay listen``) against an embedded PostgreSQL of its own with relay's SQL (the durable
history), and this script playing one worker over the listener's socket (``relay.bus``).

1. U users, one message each on ``user_Usage_<i>``; a first listener answers an attach of
   each, whose ``cursors`` are what each client holds; then it stops.
2. ``--missed`` messages on a tenth of the users' channels while no listener runs: their
   clients will resume behind (read from the outbox), the others at the head.
3. A second listener (its history empty, as after a deploy): every user attaches again with
   its cursors, at ``--rate`` attaches a second (sent every ``--tick-ms``: a storm's arrive
   one or two at a time from each worker),
   and the listener's CPU and its PostgreSQL backend's CPU are read per attach, with how many
   answers replayed what, and how many resynced (none should).

Not a test: a figure for docs/performance.md and the reports.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.listener_cost import _backend_pid, _cpu, _wait, scratch_database
from relay import bus

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One fake worker: attaches, and the answers as they come."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.answers: dict[int, dict[str, Any]] = {}
        self.stats: dict[str, Any] = {}
        self.sock.sendall(bus.encode(bus.HELLO, {"pid": os.getpid(), "bus": bus.VERSION}))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        reader = bus.FrameReader()
        while data := self.sock.recv(1 << 20):
            for kind, body in reader.feed(data):
                if kind == bus.ATTACHED:
                    answer = json.loads(body)
                    self.answers[answer["req"]] = answer
                elif kind == bus.STATS_REPLY:
                    self.stats = json.loads(body)

    def attach(self, req: int, user: int, resume: dict[str, str]) -> bytes:
        return bus.encode(bus.ATTACH, {
            "req": req, "user": f"u{user}", "resume": resume, "iat": time.time(),
            "channels": [f"user_Subscription_u{user}", f"user_Usage_u{user}"]})

    def ask_stats(self) -> None:
        self.sock.sendall(bus.encode(bus.STATS, {"req": 0}))


def _listener(url: str, workdir: Path, name: str) -> tuple[subprocess.Popen[bytes], Worker]:
    socket_path = str(workdir / f"{name}.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(DATABASE_URL=url, WEBSOCKET_JWT_SECRET="b" * 40, RELAY_SOCKET_PATH=socket_path,
               RELAY_USER_CHANNELS="off", RELAY_LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-m", "relay", "listen"], cwd=ROOT, env=env,
                            stdout=(workdir / f"{name}.log").open("wb"),
                            stderr=subprocess.STDOUT)
    _wait(lambda: os.path.exists(socket_path), 30, "the listener's socket")
    worker = Worker(socket_path)

    def connected() -> bool:
        worker.ask_stats()
        time.sleep(0.05)
        return worker.stats.get("database") == "connected"

    _wait(connected, 30, "the database")
    return proc, worker


def _publish(url: str, channels: list[str]) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(relay_publish(c, json_build_object('table', 'usage', "
                    "'note', repeat('x', 150)))) FROM unnest(%s::text[]) AS c", (channels,))
    conn.close()


def measure(url: str, users: int, rate: float, missed: int, workdir: Path,
            tick: float = 0.001, spy: str = "") -> dict[str, Any]:
    _publish(url, [f"user_Usage_u{i}" for i in range(users)])
    proc, worker = _listener(url, workdir, "first")
    try:
        worker.sock.sendall(b"".join(worker.attach(i + 1, i, {}) for i in range(users)))
        _wait(lambda: len(worker.answers) == users, 600, "the first attaches")
        cursors = [worker.answers[i + 1]["cursors"] for i in range(users)]
    finally:
        proc.terminate()
        proc.wait(10)
    behind = list(range(0, users, 10))
    for _ in range(missed):
        _publish(url, [f"user_Usage_u{i}" for i in behind])
    proc, worker = _listener(url, workdir, "second")
    try:
        backend = _backend_pid(url)
        spying = None
        if spy:  # py-spy's samples of the listener through the resumes (not for the figures)
            spying = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "500", "-f",
                                       "raw", "-o", spy, "-p", str(proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu_l, cpu_b = _cpu(proc.pid), _cpu(backend)
        started = time.monotonic()
        per_tick = max(1, round(rate * tick))
        for first in range(0, users, per_tick):
            batch = range(first, min(users, first + per_tick))
            worker.sock.sendall(b"".join(worker.attach(i + 1, i, cursors[i]) for i in batch))
            time.sleep(max(0.0, started + (first + per_tick) / rate - time.monotonic()))
        _wait(lambda: len(worker.answers) == users, 600, "the resumed attaches")
        seconds = time.monotonic() - started
        listener_s, backend_s = _cpu(proc.pid) - cpu_l, _cpu(backend) - cpu_b
        if spying is not None:
            spying.send_signal(2)
            spying.wait(30)
    finally:
        proc.terminate()
        proc.wait(10)
    answers = list(worker.answers.values())
    replayed = sum(len(a.get("replay") or []) for a in answers)
    return {"users": users, "rate": rate, "perSend": per_tick, "missedPerBehindUser": missed,
            "usersBehind": len(behind), "seconds": round(seconds, 2),
            "listenerUsPerAttach": round(listener_s / users * 1e6, 1),
            "backendUsPerAttach": round(backend_s / users * 1e6, 1),
            "replayed": replayed, "expectedReplayed": missed * len(behind),
            "resynced": sum(1 for a in answers if a.get("resync")),
            "refused": sum(1 for a in answers if not a.get("ok"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1500.0, help="attaches a second")
    parser.add_argument("--missed", type=int, default=2,
                        help="messages each tenth user missed while no listener ran")
    parser.add_argument("--tick-ms", type=float, default=1.0,
                        help="send the attaches due every this many ms")
    parser.add_argument("--spy", default="", metavar="FILE",
                        help="py-spy's raw samples of the second listener, to FILE")
    args = parser.parse_args()
    with scratch_database("attach-cost-") as (url, workdir):
        result = measure(url, args.users, args.rate, args.missed, workdir,
                         args.tick_ms / 1000, args.spy)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
