"""The listener's cost at 1,000 and 100,000 channels: ``python -m bench.listener_cost``.

What grows with users on the database side, measured on the real listener process
(``python -m relay listen``) against an embedded PostgreSQL of its own, with this script
playing one worker over the listener's socket (``relay.bus``), so that 50,000 users need no
50,000 WebSockets:

* attach — time to attach U users (two channels each) and the listener's RSS per user;
* route  — K notifications through ``relay_publish`` to random attached users: CPU of the
           listener process and of its PostgreSQL backend, per notification;
* drop   — K notifications to users nobody attached (what every other machine sees): the
           same two CPU figures;
* reconnect — ``pg_terminate_backend`` of the listener's backend: seconds until a
           notification flows again, and the size of the RESYNC frame each worker gets;
* catch-up — (``--catch-up N``, durable history) N messages committed in one transaction
           while the listener is stopped and its backend cut: the listener reads them from
           the outbox after reconnecting, page by page; seconds until the worker has them
           all, and the listener's CPU per message.

``--mode off`` (the shared channel alone) or ``listen`` (every user's channels LISTENed too;
notifications then go by ``pg_notify`` on the user's channel, as an app's own trigger does).
Not a test: figures for docs/performance.md and the reports, printed as one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from relay import bus
from relay.dev.postgres import EmbeddedPostgres
from relay.schema import install_schema

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One fake worker: sends attaches, counts what comes back in a reader thread."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.updates = 0
        self.answers = 0
        self.resyncs: list[int] = []  # sizes of the RESYNC frames
        self.stats: dict[str, Any] = {}
        self._req = 0
        self.sock.sendall(bus.encode(bus.HELLO, {"pid": os.getpid(), "bus": bus.VERSION}))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        reader = bus.FrameReader()
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                return
            for kind, body in reader.feed(data):
                if kind == bus.UPDATE:
                    self.updates += 1
                    self.on_update(body)
                elif kind == bus.ATTACHED:
                    self.answers += 1
                elif kind == bus.RESYNC:
                    self.resyncs.append(len(body))
                elif kind == bus.STATS_REPLY:
                    self.stats = json.loads(body)

    def on_update(self, body: bytes | memoryview) -> None:
        """Each UPDATE as it arrives (a subclass's hook: nothing here)."""

    def attach(self, users: range, prefix: str) -> None:
        frames = []
        for i in users:
            self._req += 1
            frames.append(bus.encode(bus.ATTACH, {
                "req": self._req, "user": f"{prefix}{i}", "resume": {},
                "channels": [f"user_Subscription_{prefix}{i}", f"user_Usage_{prefix}{i}"]}))
            if len(frames) == 1000:
                self.sock.sendall(b"".join(frames))
                frames = []
        if frames:
            self.sock.sendall(b"".join(frames))


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[tuple[str, Path]]:
    """A fresh embedded PostgreSQL with relay's schema, in a new temporary directory: its
    URL and the directory (for the bench's own files); stopped and removed at the end (each
    left 40-100 MB in the temporary directory)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = EmbeddedPostgres(workdir / "pg")
        server.start()
        try:
            install_schema(server.url)
            yield server.url, workdir
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _backend_pid(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'relay-listener'")
        (pid,) = cur.fetchone()
    conn.close()
    return int(pid)


def _send(url: str, mode: str, users: list[str], count: int, per_tx: int = 10) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    call = ("relay_publish(%s, %s::json)" if mode == "off" else "pg_notify(%s, %s)")
    with conn.cursor() as cur:
        for start in range(0, count, per_tx):
            batch = [random.choice(users) for _ in range(min(per_tx, count - start))]
            # Each payload unique: pg_notify collapses identical ones within a transaction.
            payloads = [json.dumps({"table": "usage", "operation": "UPDATE", "n": start + i,
                                    "row": {"id": 1, "amount": 42, "note": "x" * 150}})
                        for i in range(len(batch))]
            cur.execute("SELECT " + ", ".join([call] * len(batch)),
                        [v for user, payload in zip(batch, payloads, strict=True)
                         for v in (f"user_Usage_{user}", payload)])
    conn.close()


def measure(url: str, mode: str, users: int, notifications: int, workdir: Path,
            catch_up: int = 0) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    socket_path = str(workdir / f"listener-{mode}-{users}.sock")
    env.update(DATABASE_URL=url, WEBSOCKET_JWT_SECRET="b" * 40, RELAY_SOCKET_PATH=socket_path,
               RELAY_USER_CHANNELS=mode, RELAY_LOG_LEVEL="warning", RELAY_LINGER_SECONDS="600")
    log = (workdir / f"listener-{mode}-{users}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "relay", "listen"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: os.path.exists(socket_path), 30, "the listener's socket")
        worker = Worker(socket_path)
        _wait(lambda: worker.stats.get("database") == "connected", 30, "the database")
        listener = psutil.Process(proc.pid)
        rss0 = listener.memory_info().rss
        started = time.monotonic()
        worker.attach(range(users), "u")
        _wait(lambda: worker.answers == users, 3600, "every attach")
        attach_seconds = time.monotonic() - started
        time.sleep(1.5)  # the next push of figures
        rss = listener.memory_info().rss
        out: dict[str, Any] = {
            "mode": mode, "users": users, "channels": 2 * users,
            "listened": worker.stats.get("listened"),
            "attachSeconds": round(attach_seconds, 2),
            "rssPerUserBytes": round((rss - rss0) / users),
        }
        backend = _backend_pid(url)
        names = [f"u{i}" for i in range(users)]
        for phase, targets in (("route", names), ("drop", [f"stranger{i}" for i in range(1000)])):
            before = worker.updates
            dropped = worker.stats.get("notificationsDropped", {}).get("unsubscribed", 0)
            cpu_l, cpu_b = _cpu(proc.pid), _cpu(backend)
            _send(url, mode, targets, notifications)
            if phase == "route":
                _wait(lambda b=before: worker.updates - b >= notifications, 300, "the updates")
            else:
                _wait(lambda d=dropped: mode == "listen" or worker.stats.get(
                    "notificationsDropped", {}).get("unsubscribed", 0) - d >= notifications,
                    300, "the drops")
                time.sleep(1.5)
            out[f"{phase}ListenerUs"] = round((_cpu(proc.pid) - cpu_l) / notifications * 1e6, 1)
            out[f"{phase}BackendUs"] = round((_cpu(backend) - cpu_b) / notifications * 1e6, 1)
        # A database reconnect: how long until updates flow again, and the resync's size.
        before = worker.updates
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        conn.close()
        cut = time.monotonic()
        # With the durable history the listener catches up from the outbox: no resync.
        durable = worker.stats.get("history") == "durable"
        _wait(lambda: durable or worker.resyncs, 3600, "the resync")
        while worker.updates == before:
            _send(url, mode, names[:1], 1)
            time.sleep(0.05)
            if time.monotonic() - cut > 3600:
                raise SystemExit("no update after the reconnect")
        out["reconnectSeconds"] = round(time.monotonic() - cut, 2)
        out["resyncFrameBytes"] = worker.resyncs[-1] if worker.resyncs else 0
        if catch_up and durable:
            out.update(_catch_up(url, proc.pid, worker, users, catch_up))
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def _catch_up(url: str, pid: int, worker: Worker, users: int, count: int) -> dict[str, Any]:
    """One transaction of ``count`` messages to attached users committed while the listener
    is stopped and its backend cut: it reconnects and reads them all from the outbox (the
    follower's scan, what a big transaction's one sync frame also leads to)."""
    listener = psutil.Process(pid)
    before = worker.updates
    listener.suspend()
    try:
        backend = _backend_pid(url)
        conn = psycopg2.connect(url)
        conn.autocommit = True  # the messages commit in one transaction, then the cut
        with conn.cursor() as cur:
            cur.execute("SELECT count(relay_publish('user_Usage_u' || (i %% %s), "
                        "json_build_object('table', 'usage', 'n', i, 'note', repeat('x', 150))))"
                        " FROM generate_series(1, %s) AS i", (users, count))
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        conn.close()
        cpu = _cpu(pid)
        started = time.monotonic()
    finally:
        listener.resume()
    _wait(lambda: worker.updates - before >= count, 600, "the catch-up")
    return {"catchUpRows": count,
            "catchUpSeconds": round(time.monotonic() - started, 2),
            "catchUpListenerUs": round((_cpu(pid) - cpu) / count * 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="500,50000",
                        help="comma-separated user counts (two channels each)")
    parser.add_argument("--modes", default="off,listen")
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--listen-max-users", type=int, default=5000,
                        help="skip listen mode above this (LISTEN is quadratic before PG 19)")
    parser.add_argument("--catch-up", type=int, default=0, metavar="N",
                        help="with the durable history, also N messages in one transaction "
                             "read from the outbox after a reconnect (the follower's scan)")
    args = parser.parse_args()
    rows = []
    with scratch_database("listener-cost-") as (url, workdir):
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT version()")
            version = cur.fetchone()[0].split(" on ")[0]
        conn.close()
        for mode in args.modes.split(","):
            for users in (int(u) for u in args.users.split(",")):
                if mode == "listen" and users > args.listen_max_users:
                    continue
                rows.append(measure(url, mode, users, args.notifications, workdir,
                                    args.catch_up))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{version}, {args.notifications} notifications per phase, payload ~220 bytes")
    header = ("mode", "users", "listened", "attach s", "RSS/user B", "route: listener µs",
              "route: backend µs", "drop: listener µs", "drop: backend µs", "reconnect s",
              "RESYNC B")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(v) for v in (
            r["mode"], r["users"], r["listened"], r["attachSeconds"], r["rssPerUserBytes"],
            r["routeListenerUs"], r["routeBackendUs"], r["dropListenerUs"], r["dropBackendUs"],
            r["reconnectSeconds"], r["resyncFrameBytes"])))
    for r in rows:
        if "catchUpRows" in r:
            print(f"catch-up ({r['mode']}, {r['users']} users): {r['catchUpRows']} messages of "
                  f"one transaction read from the outbox in {r['catchUpSeconds']} s, listener "
                  f"{r['catchUpListenerUs']} us per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
