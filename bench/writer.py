"""The notification writer: commits NOTIFYs into PostgreSQL from a process of its own.

``python -m bench.writer steady …`` commits ``rate`` notifications per second for ``warmup +
duration`` seconds, ``per_tx`` per transaction (many small transactions), over a few
connections driven by threads on an open-loop schedule (a late transaction does not delay
the next ones' deadlines); when the database cannot keep up it stops on time, short.
Notification ``n`` goes to user ``n % users + 1``.
``python -m bench.writer burst …`` commits ONE transaction that notifies users 1…N.
``python -m bench.writer ceiling …`` measures how many notifying commits PostgreSQL takes:
``writers`` connections each commit one ``pg_notify`` per transaction as fast as they can for
``seconds`` (``--plain``: the same transactions without the NOTIFY, for contrast;
``--publish publish``: one ``relay_publish`` to a random user among 100,000 instead, numbered at
COMMIT under relay's commit lock, the listener saying ``relay.hello(2)`` so that the outbox is
on), while one session LISTENs and reads, as relay's listener does. A notifying commit takes
a cluster-wide lock (the queue must stay in commit order), so these commits are serialised:
that rate is a ceiling on the app's notifying writes, whatever relay does.

Each payload looks like the bundled trigger's (``table``, ``operation``, ``row``, ``ts``)
plus what the load generators check: ``u`` (the user), ``n`` (unique) and ``k`` (phase).
``ts`` is PostgreSQL's ``clock_timestamp()`` as the row is built, just before the commit.
``--publish notify`` (the default) sends each with ``pg_notify`` on the user's own channel, as
an app's own trigger does; ``--publish publish`` calls ``relay_publish(channel, payload)``
(installed by ``python -m relay db install``), which carries the channel inside one shared
channel. ``--spread random`` picks each notification's user at random among ``users`` (the
scale scenario: random users among 100,000) instead of ``n % users + 1``.
Prints one JSON line with what was committed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from typing import Any

import psycopg2

_PAYLOAD = """json_build_object(
    'table', 'subscription', 'operation', 'UPDATE',
    'row', json_build_object('id', n, 'user_id', u, 'plan', 'pro', 'status', 'active'),
    'u', u, 'n', n, 'k', %s, 'ts', extract(epoch FROM clock_timestamp()))"""
# How a notification is committed: the app's own trigger's way (pg_notify on the user's
# channel), or relay's one shared channel (relay_publish, from `python -m relay db install`).
STATEMENTS = {
    "notify": f"SELECT pg_notify('user_Subscription_' || u, {_PAYLOAD}::text) "
              "FROM unnest(%s::text[], %s::bigint[]) AS t(u, n)",
    "publish": f"SELECT relay_publish('user_Subscription_' || u, {_PAYLOAD}) "
               "FROM unnest(%s::text[], %s::bigint[]) AS t(u, n)",
}
BURST_BASE = 1_000_000_000  # burst numbers never collide with steady ones


def steady(dsn: str, rate: float, users: int, duration: float, warmup: float, per_tx: int,
           threads: int, publish: str = "notify", spread: str = "modulo",
           kind: str | None = None, seed: int = 1) -> dict[str, Any]:
    """``kind``: every notification's ``k`` (else ``w`` during the warm-up, ``s`` after)."""
    statement = STATEMENTS[publish]
    total_tx = int((warmup + duration) * rate / per_tx)
    interval = per_tx / rate
    warmup_tx = int(warmup / interval)
    start = time.monotonic() + 0.2
    end = start + warmup + duration + 1.0
    committed = [0] * threads
    measured = [0] * threads
    worst_lag = [0.0] * threads
    backend_cpu: list[float | None] = [None] * threads
    # Per measured transaction: how late it started against its schedule, and how long its
    # statement (relay_publish x per_tx and the COMMIT, numbering included) took.
    late: list[list[float]] = [[] for _ in range(threads)]
    round_trip: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def run(index: int) -> None:
        conn = psycopg2.connect(dsn, application_name="bench-writer")
        conn.autocommit = True  # one statement, one transaction
        pick = random.Random(seed * 1000 + index)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                backend = cur.fetchone()[0]
                cpu0 = backend_cpu_seconds(backend)
                for tx in range(index, total_tx, threads):
                    if time.monotonic() > end:
                        break  # the database cannot keep up: what was committed is the result
                    due = start + tx * interval
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        worst_lag[index] = max(worst_lag[index], -delay)
                    numbers = list(range(tx * per_tx, (tx + 1) * per_tx))
                    phase = kind or ("w" if tx < warmup_tx else "s")
                    if spread == "random":
                        targets = [str(pick.randint(1, users)) for _ in numbers]
                    else:
                        targets = [str(n % users + 1) for n in numbers]
                    sent = time.monotonic()
                    cur.execute(statement, (phase, targets, numbers))
                    committed[index] += per_tx
                    if phase == "s":
                        measured[index] += per_tx
                        late[index].append(max(0.0, sent - due))
                        round_trip[index].append(time.monotonic() - sent)
                cpu1 = backend_cpu_seconds(backend)
                if cpu0 is not None and cpu1 is not None:
                    backend_cpu[index] = cpu1 - cpu0
        except Exception as exc:  # noqa: BLE001 - reported in the result line
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start_wall = time.time() + (start - time.monotonic())
    for worker in workers:
        worker.start()
    measured_start_wall = time.time() + (start - time.monotonic()) + warmup_tx * interval
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - start
    return {"committed": sum(committed), "measured": sum(measured), "seconds": elapsed,
            "rate": sum(committed) / elapsed if elapsed > 0 else 0.0,
            "start": start_wall, "measuredStart": measured_start_wall,
            "worstLagS": max(worst_lag),
            "lateMs": _percentiles_ms([x for per in late for x in per]),
            "roundTripMs": _percentiles_ms([x for per in round_trip for x in per]),
            # The CPU of the writer's PostgreSQL backends (they end with it, so a caller that
            # samples the server's processes before and after never sees them); None when the
            # database runs on another machine.
            "backendCpuSeconds": (sum(x for x in backend_cpu if x is not None)
                                  if all(x is not None for x in backend_cpu) else None),
            "errors": errors}


def backend_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a local PostgreSQL backend, or None (not on this machine)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)] * 1000, 3)
            for q in (50, 90, 99)} | {"max": round(ordered[-1] * 1000, 3)}


def burst(dsn: str, users: int, publish: str = "notify", among: int = 0,
          seed: int = 1) -> dict[str, Any]:
    """One transaction notifying ``users`` distinct users: 1…users, or (``among``) a random
    sample of them among 1…among."""
    chosen = (sorted(random.Random(seed).sample(range(1, among + 1), users)) if among > users
              else list(range(1, users + 1)))
    conn = psycopg2.connect(dsn, application_name="bench-writer")
    try:
        with conn.cursor() as cur:
            cur.execute(STATEMENTS[publish], ("b", [str(u) for u in chosen],
                                              [BURST_BASE + u for u in chosen]))
        before_commit = time.time()
        conn.commit()
        committed = time.time()
    finally:
        conn.close()
    return {"count": users, "beforeCommit": before_commit, "committed": committed}


CEILING_CHANNEL = "relay_bench_ceiling"
# About the size of the bundled trigger's payload for a small row.
CEILING_PAYLOAD = json.dumps({"table": "subscription", "operation": "UPDATE", "row": {
    "id": 1, "user_id": "42", "plan": "pro", "status": "active",
    "updated_at": "2026-11-30T10:00:00.000000+00:00"}, "ts": 1790000000.123456})


# --write: the row each transaction writes, as the app's write that fires its trigger.
CEILING_TABLE = "relay_bench_ceiling_rows"


def _ceiling_statement(plain: bool, relay: bool, write: bool) -> str:
    """One transaction's statement, with ``%(u)s`` for the user and ``%(p)s`` for the payload
    where it takes them."""
    row = f"INSERT INTO {CEILING_TABLE} (user_id) VALUES (%(u)s)"
    if plain:
        return row if write else "SELECT txid_current()"
    notify = (f"relay_publish('user_Subscription_' || {'w.u' if write else '%(u)s'}, "
              "%(p)s::json)" if relay else f"pg_notify('{CEILING_CHANNEL}', %(p)s)")
    return (f"WITH w AS ({row} RETURNING user_id AS u) SELECT {notify} FROM w" if write
            else f"SELECT {notify}")


def ceiling(dsn: str, writers: int, seconds: float, plain: bool,
            publish: str = "notify", write: bool = False) -> dict[str, Any]:
    """``write``: each transaction also INSERTs a row, as an app's write that notifies does.
    A transaction that wrote nothing but a NOTIFY has no WAL of its own to flush, so its
    COMMIT does not wait for the disk; one that wrote a row waits for its flush, and a
    notifying one waits holding the lock that serialises notifying commits."""
    import select

    relay = publish == "publish"
    statement = _ceiling_statement(plain, relay, write)
    listener = psycopg2.connect(dsn, application_name="bench-ceiling-listener")
    listener.autocommit = True
    created = False
    with listener.cursor() as cur:
        if write:
            cur.execute("SELECT to_regclass(%s) IS NULL", (CEILING_TABLE,))
            created = bool(cur.fetchone()[0])
            cur.execute(f"CREATE TABLE IF NOT EXISTS {CEILING_TABLE} "
                        "(id bigserial PRIMARY KEY, user_id text NOT NULL)")
        if relay:
            cur.execute("LISTEN relay")
            cur.execute("SELECT relay.hello(2)")  # a durable listener: the outbox is on
        else:
            cur.execute(f"LISTEN {CEILING_CHANNEL}")
    received = [0]
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            if select.select([listener], [], [], 0.1)[0]:
                listener.poll()
                received[0] += len(listener.notifies)
                listener.notifies.clear()

    start = [0.0]
    ready = threading.Barrier(writers + 1, action=lambda: start.__setitem__(0, time.monotonic()))
    commits = [0] * writers
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors: list[str] = []

    def commit_loop(index: int) -> None:
        conn = psycopg2.connect(dsn, application_name="bench-ceiling")
        conn.autocommit = True  # one statement, one transaction
        pick = random.Random(index)
        try:
            with conn.cursor() as cur:
                ready.wait()
                end = start[0] + seconds
                while (now := time.monotonic()) < end:
                    # psycopg2 ignores the names a statement does not use
                    cur.execute(statement, {"u": str(pick.randint(1, 100_000)),
                                            "p": CEILING_PAYLOAD})
                    after = time.monotonic()
                    if after <= end:
                        commits[index] += 1
                        latencies[index].append(after - now)
        except Exception as exc:  # noqa: BLE001 - reported in the result line
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    reader = threading.Thread(target=listen)
    threads = [threading.Thread(target=commit_loop, args=(i,)) for i in range(writers)]
    reader.start()
    for thread in threads:
        thread.start()
    ready.wait()  # every writer connected: the clock starts
    for thread in threads:
        thread.join()
    time.sleep(0.2)
    done.set()
    reader.join()
    with listener.cursor() as cur:
        cur.execute("SHOW fsync")
        fsync = cur.fetchone()[0]
        cur.execute("SHOW synchronous_commit")
        synchronous_commit = cur.fetchone()[0]
        if created:
            cur.execute(f"DROP TABLE IF EXISTS {CEILING_TABLE}")
    listener.close()
    ordered = sorted(x for per in latencies for x in per)
    total = sum(commits)

    def at(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else None

    return {"writers": writers, "seconds": seconds, "notify": not plain,
            "publish": publish if not plain else None, "write": write, "commits": total,
            "commitsPerSecond": total / seconds, "received": received[0],
            "latencyMs": {"p50": at(0.5), "p99": at(0.99)}, "fsync": fsync,
            "synchronousCommit": synchronous_commit, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("steady")
    s.add_argument("--dsn", required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--warmup", type=float, default=2.0)
    s.add_argument("--per-tx", type=int, default=5)
    s.add_argument("--threads", type=int, default=4)
    s.add_argument("--publish", choices=sorted(STATEMENTS), default="notify")
    s.add_argument("--spread", choices=("modulo", "random"), default="modulo")
    s.add_argument("--kind", help="every notification's k (default: w, then s)")
    s.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("burst")
    b.add_argument("--dsn", required=True)
    b.add_argument("--users", type=int, required=True)
    b.add_argument("--among", type=int, default=0,
                   help="a random sample of --users distinct users among 1…among")
    b.add_argument("--publish", choices=sorted(STATEMENTS), default="notify")
    b.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("ceiling")
    c.add_argument("--dsn", required=True)
    c.add_argument("--writers", type=int, default=8)
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--plain", action="store_true", help="commit without NOTIFY, for contrast")
    c.add_argument("--publish", choices=sorted(STATEMENTS), default="notify")
    c.add_argument("--write", action="store_true",
                   help="each transaction also INSERTs a row (as the app's write that fires "
                        "its trigger): its COMMIT then waits for the WAL flush")
    args = parser.parse_args()
    if args.command == "steady":
        result = steady(args.dsn, args.rate, args.users, args.duration, args.warmup,
                        args.per_tx, args.threads, args.publish, args.spread, args.kind,
                        args.seed)
    elif args.command == "ceiling":
        result = ceiling(args.dsn, args.writers, args.seconds, args.plain, args.publish,
                         args.write)
    else:
        result = burst(args.dsn, args.users, args.publish, args.among, args.seed)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
