"""What numbering at COMMIT costs as transactions grow: backend CPU per transaction of K
``relay_publish`` calls.

``python -m bench.commit_cost --dsn URL [--dsn URL2 …] --messages 1,2,5,20`` runs, in each
database (relay's SQL installed, a durable listener's ``relay.hello(2)`` said once so that the
outbox is on), a server-side loop of transactions of K messages to random users among 100,000,
the databases and sizes interleaved, the least of three rounds, and prints one JSON object:
database → K → microseconds of the backend's CPU (``/proc/<pid>/schedstat``, so PostgreSQL
must run on this machine). Two databases on one server holding two versions of relay's SQL
compare the versions under the same load, steadier than a wall clock on a shared machine.
bench/outbox_cost.py measures one message per transaction against plain NOTIFY.
"""

from __future__ import annotations

import argparse
import json

import psycopg2

from bench.outbox_cost import payload

_MESSAGES_LOOP = """
CREATE OR REPLACE PROCEDURE bench_messages_loop(k integer, n integer, users integer)
LANGUAGE plpgsql AS $$
DECLARE
    p json := %s;
BEGIN
    FOR i IN 1..n LOOP
        FOR j IN 1..k LOOP
            PERFORM relay_publish('user_Subscription_' || (1 + (random() * (users - 1))::integer),
                                  p);
        END LOOP;
        COMMIT;
    END LOOP;
END $$
"""


def messages_cpu(dsns: list[str], sizes: list[int], users: int = 100_000,
                 rounds: int = 3) -> dict[str, dict[int, float]]:
    """Backend CPU microseconds per transaction of ``k`` relay_publish calls (k in ``sizes``)
    to random users among ``users``, in each database of ``dsns`` (e.g. two versions of
    relay's SQL on one server), interleaved, the least of ``rounds``: what the numbering at
    COMMIT costs as transactions grow."""
    sessions = []
    for dsn in dsns:
        conn = psycopg2.connect(dsn, application_name="bench-outbox-messages")
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(_MESSAGES_LOOP % ("'" + payload("1", 1).replace("'", "''") + "'"))
        cur.execute("SET synchronous_commit = off")
        cur.execute("SELECT pg_backend_pid()")
        sessions.append((dsn, conn, cur, f"/proc/{cur.fetchone()[0]}/schedstat"))
    best: dict[str, dict[int, float]] = {dsn: {} for dsn in dsns}
    try:
        for _, _, cur, _ in sessions:
            for k in sizes:
                cur.execute("CALL bench_messages_loop(%s, 100, %s)", (k, users))  # warm up
        for _ in range(rounds):
            for k in sizes:
                count = max(40, 1000 // k)
                for dsn, _, cur, path in sessions:
                    with open(path) as stat:
                        before = int(stat.read().split()[0])
                    cur.execute("CALL bench_messages_loop(%s, %s, %s)", (k, count, users))
                    with open(path) as stat:
                        spent = (int(stat.read().split()[0]) - before) / count / 1000
                    best[dsn][k] = round(min(best[dsn].get(k, spent), spent), 1)
    finally:
        for _, conn, _, _ in sessions:
            conn.close()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_cost",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", action="append", required=True, help="repeat to compare")
    parser.add_argument("--messages", default="1,2,5,20", help="K,K,…: messages per transaction")
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.messages.split(",")]
    print(json.dumps(messages_cpu(args.dsn, sizes, args.users)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
