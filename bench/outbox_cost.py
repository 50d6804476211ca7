"""What relay's durable history costs the app's writes (the ``outbox`` scenario of make bench).

``python -m bench.outbox_cost --dsn URL`` installs relay's SQL into that database (which it
may write to: it creates a table ``bench_app``), says ``relay.hello(2)`` as a durable listener
does, keeps one session LISTENing and reading relay's channel, and measures, one after the
other:

* latency — one app connection commits transactions of three kinds in shuffled rounds, so
  that the machine's swings hit them alike: ``base`` (INSERT an app row), ``notify`` (the same
  and a ``pg_notify`` of the payload on the user's channel: what an app's own trigger does)
  and ``publish`` (the same with ``relay_publish``: staged, numbered at COMMIT, kept in
  relay.outbox). p50/p90/p99 of each; added latency = publish − notify per percentile, and the
  median of the per-round differences. Then ``writers`` connections do the same at once;
* first transaction — of a new connection, ``notify`` against ``publish`` (PL/pgSQL compiles
  relay's functions once per session);
* backend CPU — microseconds of the server process's CPU per transaction of each kind, the
  kinds run by a procedure in the server (no client in the figure) and interleaved (its
  ``/proc/<pid>/schedstat`` before and after, so PostgreSQL must run on this machine): what
  relay's SQL costs the database, steadier than the wall clock on a loaded machine; and a fourth
  kind, five ``relay_publish`` in one transaction, for what each further message costs;
* commit ceiling — transactions that write a row and publish one message, committed per
  second by ``--ceiling-writers`` connections as fast as they can, ``relay_publish`` (numbered
  under relay's commit lock) against ``pg_notify``, alternated (the worst of two runs each);
* WAL — bytes per transaction of each kind, one writer, in a quiet moment: what the outbox adds
  per message;
* outbox bytes per row — relay.outbox's growth (heap, TOAST, both indexes) per message;
* cleanup — ``relay.cleanup(2000)`` over expired rows: milliseconds per batch, WAL per row.

Every transaction must commit: ``failedWrites`` counts those that did not. The payload is like
the bundled trigger's (about 260 bytes). Run it against a PostgreSQL with fsync on: a COMMIT
waits for its WAL flush, which is part of what an app sees. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from typing import Any

import psycopg2

KINDS = ("base", "notify", "publish")
_INSERT = "INSERT INTO bench_app (user_id, note) VALUES (%(u)s, 'x')"
STATEMENTS = {
    "base": _INSERT,
    "notify": _INSERT + "; SELECT pg_notify('user_Subscription_' || %(u)s, %(p)s)",
    "publish": _INSERT + "; SELECT relay_publish('user_Subscription_' || %(u)s, %(p)s::json)",
}


def payload(user: str, n: int) -> str:
    """About what relay_notify sends for a small row (264 bytes at n < 10^6)."""
    row = {"id": 100000 + n, "user_id": user, "plan": "pro", "status": "active",
           "seats": 5, "renews_at": "2026-12-01T00:00:00+00:00", "note": "x" * 40}
    return json.dumps({"table": "subscription", "operation": "UPDATE", "row": row,
                       "ts": 1764000000.123456}, separators=(",", ":"))


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "n": len(ordered)}


class Bench:
    def __init__(self, dsn: str, users: int) -> None:
        self.dsn = dsn
        self.users = users
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._n = 0

    def connect(self) -> Any:
        return psycopg2.connect(self.dsn, application_name="bench-outbox-writer")

    def transaction(self, conn: Any, kind: str, rnd: random.Random) -> float | None:
        """One app transaction of ``kind``; its milliseconds from first statement to COMMIT
        done, or None when it failed."""
        with self._lock:
            self._n += 1
            n = self._n
        user = str(rnd.randrange(1, self.users + 1))
        params = {"u": user, "p": payload(user, n)}
        started = time.perf_counter()
        try:
            with conn.cursor() as cur:
                cur.execute(STATEMENTS[kind], params)
            conn.commit()
        except psycopg2.Error as exc:
            conn.rollback()
            with self._lock:
                self.failed.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return None
        return (time.perf_counter() - started) * 1000

    def rounds(self, conn: Any, count: int, seed: int) -> dict[str, list[float]]:
        rnd = random.Random(seed)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        differences: list[float] = []
        for _ in range(count):
            order = list(KINDS)
            rnd.shuffle(order)
            got = {kind: self.transaction(conn, kind, rnd) for kind in order}
            for kind, ms in got.items():
                if ms is not None:
                    times[kind].append(ms)
            if got["notify"] is not None and got["publish"] is not None:
                differences.append(got["publish"] - got["notify"])
        times["difference"] = differences
        return times


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {kind: percentiles(times[kind]) for kind in KINDS}
    notify, publish = out["notify"], out["publish"]
    if notify and publish:
        out["addedP50Ms"] = round(publish["p50"] - notify["p50"], 3)
        out["addedP99Ms"] = round(publish["p99"] - notify["p99"], 3)
    if times["difference"]:
        out["medianPairDifferenceMs"] = round(statistics.median(times["difference"]), 3)
    return out


def setup(dsn: str) -> None:
    from relay.schema import install_schema

    install_schema(dsn)
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS bench_app "
                        "(id bigserial PRIMARY KEY, user_id text NOT NULL, note text)")
            cur.execute("SELECT relay.hello(2)")  # a durable listener: the outbox is on
            cur.execute("SELECT (relay.hello(2) ->> 'outbox')::boolean")
            if not cur.fetchone()[0]:
                raise SystemExit("relay's outbox is off or held in this database: "
                                 "nothing to measure")
    finally:
        conn.close()


class Drain:
    """One session LISTENing relay's channel and reading every notification, as relay's
    listener does (PostgreSQL's NOTIFY queue is then emptied as it goes)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn, application_name="bench-outbox-listener")
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("LISTEN relay")
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            select.select([self.conn], [], [], 0.2)
            self.conn.poll()
            self.received += len(self.conn.notifies)
            self.conn.notifies.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def wal_and_size(bench: Bench, per_kind: int) -> dict[str, Any]:
    """WAL per transaction of each kind (sequential, one writer) and the outbox's growth."""
    conn = bench.connect()
    rnd = random.Random(7)
    wal: dict[str, float] = {}
    try:
        for kind in KINDS:
            for _ in range(50):  # warm: plans compiled, pages touched
                bench.transaction(conn, kind, rnd)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_total_relation_size('relay.outbox'), count(*), "
                        "avg(octet_length(payload::text)) FROM relay.outbox")
            size0, rows0, _ = cur.fetchone()
        conn.commit()
        for kind in KINDS:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_current_wal_insert_lsn()")
                start = cur.fetchone()[0]
            conn.commit()
            for _ in range(per_kind):
                bench.transaction(conn, kind, rnd)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (start,))
                wal[kind] = float(cur.fetchone()[0]) / per_kind
            conn.commit()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_total_relation_size('relay.outbox'), count(*), "
                        "avg(octet_length(payload::text)) FROM relay.outbox")
            size1, rows1, payload_bytes = cur.fetchone()
        conn.commit()
    finally:
        conn.close()
    return {
        "transactions": per_kind,
        "walBytesPerTransaction": {k: round(v) for k, v in wal.items()},
        "walBytesPerMessage": round(wal["publish"] - wal["notify"]),
        "outboxBytesPerRow": round((size1 - size0) / (rows1 - rows0)) if rows1 > rows0 else None,
        "payloadBytes": round(float(payload_bytes or 0)),
    }


# The three kinds again, run by the server itself (a procedure that commits each one), for
# backend_cpu: no client round trip or protocol in the figure, only what PostgreSQL executes.
# And publish5, five relay_publish in one transaction: what each further message of a
# transaction costs (python -m relay size, --notifications-per-commit).
CPU_KINDS = (*KINDS, "publish5")
_LOOP = """
CREATE OR REPLACE PROCEDURE bench_loop(kind text, n integer) LANGUAGE plpgsql AS $$
DECLARE
    u text;
    p json := %s;
BEGIN
    FOR i IN 1..n LOOP
        u := (1 + (random() * 999)::integer)::text;
        INSERT INTO bench_app (user_id, note) VALUES (u, 'x');
        IF kind = 'publish' THEN
            PERFORM relay_publish('user_Subscription_' || u, p);
        ELSIF kind = 'publish5' THEN  -- five messages, to five users, in one transaction
            PERFORM relay_publish('user_Subscription_' || u, p);
            FOR j IN 1..4 LOOP
                PERFORM relay_publish(
                    'user_Subscription_' || (1 + (random() * 999)::integer)::text, p);
            END LOOP;
        ELSIF kind = 'notify' THEN
            PERFORM pg_notify('user_Subscription_' || u, p::text);
        END IF;
        COMMIT;
    END LOOP;
END $$
"""


def backend_cpu(dsn: str, count: int, rounds: int = 5) -> dict[str, Any] | None:
    """CPU microseconds per transaction of each kind in the backend that runs it, the kinds
    interleaved over ``rounds`` (the least of each); None when the server's processes are not
    readable here (a remote database). synchronous_commit is off: a flush is waited for, not
    computed."""
    best: dict[str, float] = {}
    conn = psycopg2.connect(dsn, application_name="bench-outbox-cpu")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(_LOOP % ("'" + payload("1", 1).replace("'", "''") + "'"))
            cur.execute("SET synchronous_commit = off")
            cur.execute("SELECT pg_backend_pid()")
            path = f"/proc/{cur.fetchone()[0]}/schedstat"
            for kind in CPU_KINDS:
                cur.execute("CALL bench_loop(%s, 200)", (kind,))  # plans, pages
            for _ in range(rounds):
                for kind in CPU_KINDS:
                    try:
                        with open(path) as stat:
                            before = int(stat.read().split()[0])
                    except OSError:
                        return None
                    cur.execute("CALL bench_loop(%s, %s)", (kind, count))
                    with open(path) as stat:
                        spent = (int(stat.read().split()[0]) - before) / count / 1000
                    best[kind] = round(min(best.get(kind, spent), spent), 1)
    finally:
        conn.close()
    # A further message of a transaction, beyond what its own pg_notify would cost.
    further = (best["publish5"] - best["publish"]) / 4 - (best["notify"] - best["base"])
    return {"transactions": count, "rounds": rounds, "usPerTransaction": best,
            "addedUs": round(best["publish"] - best["notify"], 1),
            "addedUsPerFurtherMessage": round(further, 1)}


def commit_ceiling(dsn: str, writers: int, seconds: float) -> dict[str, Any]:
    """Commits/s of transactions that write a row and publish one message, ``writers``
    connections as fast as they can: ``relay_publish`` (numbered under relay's commit lock,
    held until the commit is flushed) against ``pg_notify`` (PostgreSQL's own lock that
    serialises notifying commits, held as long), alternated twice on this database as it is
    configured (bench/writer.py's ceiling with --write)."""
    from bench.writer import ceiling

    runs: dict[str, list[dict[str, Any]]] = {"publish": [], "notify": []}
    for kind in ("notify", "publish", "publish", "notify"):
        runs[kind].append(ceiling(dsn, writers, seconds, plain=False, publish=kind, write=True))
    out: dict[str, Any] = {"writers": writers, "seconds": seconds}
    for kind, done in runs.items():
        rates = [r["commitsPerSecond"] for r in done]
        out[kind] = {"commitsPerSecond": round(min(rates), 1), "runs": [round(x, 1) for x in rates],
                     "errors": [e for r in done for e in r["errors"]][:5]}
    return out


def first_transactions(bench: Bench, count: int) -> dict[str, Any]:
    rnd = random.Random(11)
    times: dict[str, list[float]] = {"notify": [], "publish": []}
    for i in range(count):
        for kind in ("notify", "publish") if i % 2 else ("publish", "notify"):
            conn = bench.connect()
            try:
                ms = bench.transaction(conn, kind, rnd)
            finally:
                conn.close()
            if ms is not None:
                times[kind].append(ms)
    return {kind: percentiles(values) for kind, values in times.items()}


def concurrent(bench: Bench, writers: int, seconds: float) -> dict[str, Any]:
    """``writers`` connections, each alternating the three kinds as fast as it can."""
    merged: dict[str, list[float]] = {kind: [] for kind in (*KINDS, "difference")}
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def run(index: int) -> None:
        conn = bench.connect()
        try:
            bench.rounds(conn, 5, seed=1000 + index)  # warm this session
            got: dict[str, list[float]] = {kind: [] for kind in merged}
            while time.monotonic() < deadline:
                part = bench.rounds(conn, 10, seed=index * 7919 + len(got["base"]))
                for kind, values in part.items():
                    got[kind].extend(values)
            with lock:
                for kind, values in got.items():
                    merged[kind].extend(values)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = summarise(merged)
    out["writers"] = writers
    out["seconds"] = seconds
    return out


def cleanup_cost(dsn: str, batch: int) -> dict[str, Any]:
    conn = psycopg2.connect(dsn, application_name="bench-outbox-cleanup")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT value FROM relay.settings WHERE name = 'retention'")
            retention = cur.fetchone()[0]
            cur.execute("SELECT relay.set('retention', '1 second')")
            time.sleep(1.2)
            batches: list[float] = []
            total_ms = 0.0
            deleted = 0
            cur.execute("SELECT pg_current_wal_insert_lsn()")
            start = cur.fetchone()[0]
            while True:
                began = time.perf_counter()
                cur.execute("SELECT relay.cleanup(%s)", (batch,))
                rows = cur.fetchone()[0]
                elapsed = (time.perf_counter() - began) * 1000
                if rows <= 0:
                    break
                deleted += rows
                total_ms += elapsed
                if rows == batch:
                    batches.append(elapsed)
            cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (start,))
            wal = float(cur.fetchone()[0])
            began = time.perf_counter()
            cur.execute("SELECT relay.cleanup(%s)", (batch,))
            idle = (time.perf_counter() - began) * 1000
            cur.execute("SELECT relay.set('retention', %s)", (retention,))
    finally:
        conn.close()
    return {"batchRows": batch, "deleted": deleted,
            "batchMs": percentiles(batches) if batches else None,
            "msPer1000Rows": round(total_ms / deleted * 1000, 3) if deleted else None,
            "walBytesPerRow": round(wal / deleted) if deleted else None,
            "nothingToDoMs": round(idle, 3)}


def measure(dsn: str, rounds: int, writers: int, seconds: float, wal_transactions: int,
            first: int, users: int = 1000, ceiling_writers: int = 8,
            ceiling_seconds: float = 5.0) -> dict[str, Any]:
    setup(dsn)
    bench = Bench(dsn, users)
    drain = Drain(dsn)
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            fsync, synchronous_commit = cur.fetchone()
        conn.close()
        conn = bench.connect()
        try:
            bench.rounds(conn, 30, seed=0)  # warm-up: this session's plans, the tables' pages
            single = summarise(bench.rounds(conn, rounds, seed=1))
        finally:
            conn.close()
        many = concurrent(bench, writers, seconds) if writers > 1 else None
        firsts = first_transactions(bench, first)
        cpu = backend_cpu(dsn, 2000)
        wal = wal_and_size(bench, wal_transactions)
        cleanup = cleanup_cost(dsn, 2000)
        # last: its writers publish to 100,000 users, which would change what cleanup meets
        ceiling = commit_ceiling(dsn, ceiling_writers, ceiling_seconds) if ceiling_writers \
            else None
    finally:
        drain.stop()
    return {"fsync": fsync, "synchronousCommit": synchronous_commit, "users": users,
            "single": single, "concurrent": many, "firstTransaction": firsts,
            "backendCpu": cpu, "commitCeiling": ceiling, **wal,
            "cleanup": cleanup, "failedWrites": len(bench.failed),
            "failures": bench.failed[:10], "notificationsRead": drain.received}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_cost",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rounds", type=int, default=1500,
                        help="rounds of the three kinds on one connection")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers (1: skip)")
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrent phase")
    parser.add_argument("--wal-transactions", type=int, default=2000,
                        help="transactions per kind in the WAL phase")
    parser.add_argument("--first", type=int, default=20, help="new connections per kind")
    parser.add_argument("--ceiling-writers", type=int, default=8,
                        help="commit ceiling: connections committing at once (0: skip)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0,
                        help="commit ceiling: seconds per run (four runs)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.dsn, args.rounds, args.writers, args.seconds,
                             args.wal_transactions, args.first,
                             ceiling_writers=args.ceiling_writers,
                             ceiling_seconds=args.ceiling_seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
