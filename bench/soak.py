"""Soak: many clients, a steady stream of updates, and faults injected while it runs.

``python -m bench.soak --quick`` (200 clients, 100 updates/s for 30 s) or
``python -m bench.soak`` (the issue's run: 2,000 clients, 300 updates/s, 5 minutes);
``--clients``, ``--rate`` and ``--seconds`` override either (the faults keep their place in
the run: the listener at a quarter, PostgreSQL a little after half). It starts its own
embedded PostgreSQL and a real relay (``gunicorn -c gunicorn.conf.py wsgi:app``), client
processes (gevent + websocket-client, one user and one channel per client), and a writer.
While it runs it kill -9s the listener, restarts PostgreSQL, and makes random clients
reconnect with their resume cursors. It prints updates sent, delivered, **lost without
resync** (must be 0), duplicates (must be 0), resyncs by reason, and the workers' memory at
start and end. With relay's outbox on (the default; ``--outbox off`` for the in-memory
history) none of these faults may cost a resync: ``resyncsUnexcused`` must be 0 too (only
"history expired", a client away past the outbox's retention, would be excused).

How loss is counted without trusting relay: the writer bumps a per-user counter ``k`` in a
table and publishes it (``relay_publish``) in the same statement, so the committed ``k`` of a
user has no gaps. A client expects ``k = last + 1``. On ``resync`` it reads the table (its
snapshot) and continues from there, as the browser client refetches its data. A jump over a
``k`` that no resync covered, or a user whose last ``k`` is behind the table at the end, is a loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "soak-secret-" + "s" * 40
# A client process patches everything for gevent before anything else is imported.
_CLIENT_BOOT = ("from gevent import monkey; monkey.patch_all(); import sys; "
                "from bench.soak import main; sys.exit(main(sys.argv[1:]))")


@dataclass(frozen=True)
class Plan:
    clients: int
    processes: int
    rate: float  # updates per second, over all users
    duration: float  # seconds of writing
    kill_listener_at: float
    restart_db_at: float
    reconnect_rate: float  # per client per second
    settle: float  # seconds after the writer stops before the final count


QUICK = Plan(clients=200, processes=4, rate=100, duration=30, kill_listener_at=7.5,
             restart_db_at=16.5, reconnect_rate=0.02, settle=6)
FULL = Plan(clients=2000, processes=8, rate=300, duration=300, kill_listener_at=60,
            restart_db_at=150, reconnect_rate=0.002, settle=10)


# ----- the client processes -----


def _client_main(args: argparse.Namespace) -> None:
    """One client process: ``args.count`` WebSockets in greenlets, results as JSON on stdout."""
    import gevent
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras
    import websocket

    from relay.auth import issue_token

    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    users = [f"soak{i}" for i in range(args.first, args.first + args.count)]
    totals: dict[str, Any] = {"received": 0, "delivered": 0, "lost": 0, "duplicates": 0,
                              "resyncs": 0, "reconnects": 0, "closes": {}, "lostAtEnd": 0,
                              "resyncReasons": {}, "resumed": 0}
    last: dict[str, int] = dict.fromkeys(users, 0)
    seen: dict[str, set[int]] = {u: set() for u in users}

    def running() -> bool:
        return not os.path.exists(args.stop_file)
    db: list[Any] = [None]

    def snapshot(user: str) -> int:
        """The user's current ``k`` (what a refetch of the page's data would see)."""
        while True:
            try:
                if db[0] is None or db[0].closed:
                    db[0] = psycopg2.connect(args.dsn, connect_timeout=3)
                    db[0].autocommit = True
                with db[0].cursor() as cur:
                    cur.execute("SELECT k FROM soak_state WHERE u = %s", (user,))
                    return int(cur.fetchone()[0])
            except psycopg2.Error:
                db[0] = None
                gevent.sleep(0.5)

    def handle(user: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "update":
            k = int(message["data"]["k"])
            totals["received"] += 1
            if args.drop_every and totals["received"] % args.drop_every == 0:
                return  # --self-check: pretend this one never arrived
            if k in seen[user]:
                totals["duplicates"] += 1
                return
            seen[user].add(k)
            if k <= last[user]:
                return  # already covered by a snapshot taken after a resync
            totals["delivered"] += 1
            if k > last[user] + 1:
                totals["lost"] += k - last[user] - 1
            last[user] = k
        elif kind == "resync":
            totals["resyncs"] += 1
            reason = str(message.get("reason"))
            totals["resyncReasons"][reason] = totals["resyncReasons"].get(reason, 0) + 1
            last[user] = max(last[user], snapshot(user))

    def run(user: str) -> None:
        cursors: dict[str, str] = {}
        first = True
        while running():
            try:
                ws = websocket.create_connection(args.url, timeout=30, suppress_origin=True)
            except (OSError, websocket.WebSocketException):
                gevent.sleep(random.uniform(0.2, 1.0))
                continue
            if not first:
                totals["reconnects"] += 1
            auth: dict[str, Any] = {"type": "auth", "token": issue_token(user, SECRET.encode(),
                                                                         3600)}
            if cursors:
                auth["resume"] = dict(cursors)
            leave_at = time.time() + random.expovariate(args.reconnect_rate)
            try:
                ws.send(json.dumps(auth))
                while running():
                    ws.settimeout(max(0.1, min(1.0, leave_at - time.time())))
                    try:
                        opcode, data = ws.recv_data(control_frame=True)
                    except websocket.WebSocketTimeoutException:
                        if time.time() >= leave_at:
                            break  # a random reconnect (page reload, network blip)
                        continue
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                        totals["closes"][str(code)] = totals["closes"].get(str(code), 0) + 1
                        break
                    if opcode != websocket.ABNF.OPCODE_TEXT:
                        continue
                    message = json.loads(data)
                    kind = message.get("type")
                    if kind == "ping":
                        ws.send('{"type":"pong"}')
                        continue
                    if kind == "connected":
                        if message.get("resumed"):
                            totals["resumed"] += 1
                        if first:
                            # Nothing before the first connection counts: start from the table.
                            last[user] = max(last[user], snapshot(user))
                        first = False
                        cursors.update(message.get("cursors") or {})
                        continue
                    if kind == "update":
                        cursors[message["channel"]] = message["cursor"]
                    elif kind == "resync":
                        cursors.update({k: v for k, v in (message.get("cursors") or {}).items()
                                        if v})
                    handle(user, message)
            except (OSError, websocket.WebSocketException, ValueError):
                totals["closes"]["1006"] = totals["closes"].get("1006", 0) + 1
            finally:
                try:
                    ws.close()
                except (OSError, websocket.WebSocketException):
                    pass

    greenlets = [gevent.spawn(run, user) for user in users]
    gevent.joinall(greenlets)
    for user in users:
        if last[user] < snapshot(user):
            totals["lostAtEnd"] += snapshot(user) - last[user]
    print(json.dumps(totals), flush=True)


# ----- the orchestrator -----


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:  # a 503 from relay is JSON; a 429 from the pending budget is plain text
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except OSError:
        return 0, {}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {what}")
        time.sleep(0.1)


def _rss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


class Writer(threading.Thread):
    """Bumps random users' ``k`` and publishes it (``relay_publish``, in the same statement),
    ``rate`` times a second, until stopped."""

    def __init__(self, dsn: str, users: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.users, self.rate = dsn, users, rate
        self.stopped = threading.Event()
        self.failures = 0

    def run(self) -> None:
        import psycopg2

        conn = None
        tick = 0.05
        carry = 0.0
        next_at = time.monotonic()
        while not self.stopped.is_set():
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))
            carry += self.rate * tick
            count, carry = int(carry), carry - int(carry)
            if not count:
                continue
            batch = random.sample(self.users, min(count, len(self.users)))
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(self.dsn, connect_timeout=3)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(
                        "WITH b AS (UPDATE soak_state SET k = k + 1 WHERE u = ANY(%s) "
                        "RETURNING u, k) SELECT count(relay_publish('user_Usage_' || u, "
                        "json_build_object('u', u, 'k', k))) FROM b", (batch,))
            except psycopg2.Error:
                self.failures += 1
                conn = None
                time.sleep(0.2)
                next_at = time.monotonic()


def soak(plan: Plan, workers: int, drop_every: int = 0, outbox: str = "on") -> dict[str, Any]:
    import psutil
    import psycopg2

    from relay.dev.postgres import EmbeddedPostgres
    from relay.schema import install_schema

    workdir = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    pg = EmbeddedPostgres(workdir / "pg")
    pg.start()
    relay: subprocess.Popen[bytes] | None = None
    clients: list[subprocess.Popen[bytes]] = []
    try:
        install_schema(pg.url)
        users = [f"soak{i}" for i in range(plan.clients)]
        conn = psycopg2.connect(pg.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE soak_state (u text PRIMARY KEY, k bigint NOT NULL)")
            cur.execute("INSERT INTO soak_state SELECT unnest(%s::text[]), 0", (users,))
            cur.execute("SELECT relay.set('outbox', %s)", (outbox,))
        conn.close()
        port = _free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
               "DATABASE_URL": pg.url, "WEBSOCKET_JWT_SECRET": SECRET, "PORT": str(port),
               # Loopback only: a port free on 127.0.0.1 may be taken on another loopback
               # address by a benchmark's clients, and then 0.0.0.0 cannot bind it.
               "RELAY_HOST": "127.0.0.1",
               "WEB_CONCURRENCY": str(workers), "RELAY_SOCKET_PATH": str(workdir / "l.sock"),
               "RELAY_DB_CHECK_INTERVAL": "2", "RELAY_DB_CHECK_TIMEOUT": "3",
               "RELAY_RECONNECT_MAX_DELAY": "2", "RELAY_DRAIN_SECONDS": "1",
               # Every client comes from 127.0.0.1: one address stands for them all, which no
               # real deployment sees (its per-address share would answer them 429).
               "RELAY_MAX_PENDING_PER_ADDRESS": "0",
               "RELAY_LOG_LEVEL": os.environ.get("SOAK_LOG_LEVEL", "warning")}
        log = (workdir / "relay.log").open("ab")
        relay = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                  "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=log)
        _wait(lambda: _health(port)[0] == 200, 30, "the relay")
        history = _health(port)[1].get("listener", {}).get("history", "memory")
        master = psutil.Process(relay.pid)

        def worker_pids() -> list[int]:
            return [p.pid for p in master.children()
                    if "relay" not in " ".join(p.cmdline()[1:3])]

        def listener_pids() -> list[int]:
            return [p.pid for p in master.children(recursive=True)
                    if "relay listen" in " ".join(p.cmdline())]

        stop_file = workdir / "stop"
        per = plan.clients // plan.processes
        for index in range(plan.processes):
            count = per if index < plan.processes - 1 else plan.clients - per * index
            clients.append(subprocess.Popen(
                [sys.executable, "-c", _CLIENT_BOOT, "--client", "--first", str(index * per),
                 "--count", str(count), "--url", f"ws://127.0.0.1:{port}/ws",
                 "--dsn", pg.url, "--stop-file", str(stop_file),
                 "--reconnect-rate", repr(plan.reconnect_rate),
                 "--drop-every", str(drop_every)],
                cwd=ROOT, stdout=subprocess.PIPE))
        _wait(lambda: _health(port)[1].get("totalConnections", 0) >= plan.clients, 60,
              "every client to connect")
        memory_start = _rss(worker_pids())
        writer = Writer(pg.url, users, plan.rate)
        began = time.monotonic()
        writer.start()
        events: list[str] = []
        done = {"listener": False, "db": False}
        while time.monotonic() - began < plan.duration:
            elapsed = time.monotonic() - began
            if not done["listener"] and elapsed >= plan.kill_listener_at:
                done["listener"] = True
                for pid in listener_pids():
                    os.kill(pid, signal.SIGKILL)
                events.append(f"{elapsed:.0f}s kill -9 listener")
            if not done["db"] and elapsed >= plan.restart_db_at:
                done["db"] = True
                pg.restart()
                events.append(f"{elapsed:.0f}s PostgreSQL restarted")
            time.sleep(0.2)
        writer.stopped.set()
        writer.join()
        time.sleep(plan.settle)  # let every client catch up (replays, resyncs) before counting
        stop_file.touch()
        results = []
        for proc in clients:
            out, _ = proc.communicate(timeout=plan.settle + 120)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        memory_end = _rss(worker_pids())
        conn = psycopg2.connect(pg.url)
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(sum(k), 0) FROM soak_state")
            sent = int(cur.fetchone()[0])
        conn.close()
        summary: dict[str, Any] = {"clients": plan.clients, "rate": plan.rate,
                                   "duration": plan.duration, "events": events, "sent": sent}
        for key in ("delivered", "lost", "lostAtEnd", "duplicates", "resyncs", "reconnects",
                    "resumed"):
            summary[key] = sum(r[key] for r in results)
        reasons: dict[str, int] = {}
        for r in results:
            for reason, n in r["resyncReasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        summary["resyncReasons"] = reasons
        summary["history"] = history
        # With relay's outbox on, nothing this run does needs a resync: the listener catches
        # up from the outbox after its kill and the database restart, and every reconnect
        # resumes. Only "history expired" (a client away past the outbox's retention) is
        # excused; the run stays well inside it.
        summary["resyncsUnexcused"] = (sum(n for r, n in reasons.items() if r != "history expired")
                                       if history == "durable" else None)
        closes: dict[str, int] = {}
        for r in results:
            for code, n in r["closes"].items():
                closes[code] = closes.get(code, 0) + n
        summary["closes"] = closes
        summary["writerFailures"] = writer.failures
        summary["workerMemoryStartMB"] = round(memory_start / 2**20, 1)
        summary["workerMemoryEndMB"] = round(memory_end / 2**20, 1)
        return summary
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
        if relay is not None and relay.poll() is None:
            relay.terminate()
            try:
                relay.wait(20)
            except subprocess.TimeoutExpired:
                relay.kill()
        pg.stop("immediate")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 clients, 100 updates/s for 30 s (instead of the issue's run)")
    parser.add_argument("--clients", type=int, help="WebSocket clients (one user each)")
    parser.add_argument("--rate", type=float, help="updates per second over all users")
    parser.add_argument("--seconds", type=float, help="how long the writer runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outbox", choices=("on", "off"), default="on",
                        help="relay's outbox (durable history); off: the in-memory history, "
                        "where the faults cost one resync each")
    parser.add_argument("--self-check", action="store_true",
                        help="clients drop every 25th update: the run must report losses")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reconnect-rate", type=float, default=0.01, help=argparse.SUPPRESS)
    parser.add_argument("--drop-every", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        _client_main(args)
        return 0
    plan = QUICK if args.quick else FULL
    if args.clients:
        plan = replace(plan, clients=args.clients,
                       processes=max(1, min(16, (args.clients + 249) // 250)))
    if args.rate:
        plan = replace(plan, rate=args.rate)
    if args.seconds:
        plan = replace(plan, duration=args.seconds, kill_listener_at=args.seconds * 0.25,
                       restart_db_at=args.seconds * 0.55)
    summary = soak(plan, args.workers, 25 if args.self_check else 0, args.outbox)
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    ok = summary["lost"] == 0 and summary["lostAtEnd"] == 0 and summary["duplicates"] == 0
    if args.self_check:
        caught = summary["lost"] + summary["lostAtEnd"] > 0
        print("self-check OK: the dropped updates were counted as lost" if caught
              else "self-check FAILED: dropped updates went unnoticed")
        return 0 if caught else 1
    if summary["resyncsUnexcused"]:
        ok = False  # the durable history owes these clients every update, no resync
    print(("OK: no update lost, no duplicate" + (", no resync" if summary[
        "history"] == "durable" else " without resync")) if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
