"""Helpers for the tests of relay's durable history at the SQL level (tests/test_sql_*.py).

``Writers`` runs app transactions on several connections at once and records what committed;
``frames_of`` reads the frames NOTIFYed on relay's shared channel up to a sentinel;
``check_outbox`` asserts what the outbox must hold after any mix of writers: exactly the
committed messages, each channel's ``seq`` 1…n without a gap and in the order of ``pos``.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from relay.listener import frames
from tests.support import NotifyListener

# body(connection, random, writer index, transaction index, sent) publishes with publish() and
# returns False to roll the transaction back.
Body = Callable[[Any, random.Random, int, int, list[tuple[str, str]]], Any]


def query(url_or_conn: Any, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (in its own committed transaction when given a URL); its rows."""
    if isinstance(url_or_conn, str):
        conn = psycopg2.connect(url_or_conn)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(statement, params or None)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()
    with url_or_conn.cursor() as cursor:
        cursor.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def install_durable(url: str, **kwargs: Any) -> None:
    """Install relay's SQL and say ``relay.hello(2)`` once, as the first relay listener that
    keeps the durable history does: until one has, writers keep nothing in the outbox."""
    from relay.schema import install_schema

    install_schema(url, **kwargs)
    query(url, "SELECT relay.hello(2)")


def publish(conn: Any, channel: str, payload: str,
            sent: list[tuple[str, str]] | None = None) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT relay_publish(%s, %s::json)", (channel, payload))
    if sent is not None:
        sent.append((channel, payload))


class Writers:
    """Several app connections committing transactions concurrently; nothing may fail."""

    def __init__(self, url: str, isolation: Callable[[int], int] | None = None,
                 setup: str = "SET deadlock_timeout = '50ms'") -> None:
        self.url = url
        self.isolation = isolation
        self.setup = setup
        self.failures: list[str] = []
        self.committed: dict[str, list[str]] = defaultdict(list)
        self.commits = 0
        self.rollbacks = 0
        self._lock = threading.Lock()

    def run(self, writers: int, per_writer: int, body: Body) -> None:
        threads = [threading.Thread(target=self._writer, args=(k, per_writer, body))
                   for k in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _writer(self, k: int, count: int, body: Body) -> None:
        conn = psycopg2.connect(self.url)
        try:
            if self.isolation is not None:
                conn.set_session(isolation_level=self.isolation(k))
            with conn.cursor() as cursor:
                cursor.execute(self.setup)
            conn.commit()
            rnd = random.Random(k)
            for i in range(count):
                sent: list[tuple[str, str]] = []
                try:
                    keep = body(conn, rnd, k, i, sent)
                    if keep is False:
                        conn.rollback()
                        with self._lock:
                            self.rollbacks += 1
                        continue
                    conn.commit()
                except psycopg2.Error as exc:
                    conn.rollback()
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                    continue
                with self._lock:
                    self.commits += 1
                    for channel, payload in sent:
                        self.committed[channel].append(payload)
        finally:
            conn.close()


def outbox_rows(url: str, prefix: str) -> dict[str, list[tuple[int, int, str]]]:
    """``{channel: [(seq, pos, payload), …]}`` in seq order, for channels starting ``prefix``."""
    rows = query(url, "SELECT channel, seq, pos, payload::text FROM relay.outbox "
                      "WHERE starts_with(channel, %s) ORDER BY channel, seq", (prefix,))
    found: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for channel, seq, pos, payload in rows:
        found[channel].append((seq, pos, payload))
    return dict(found)


def check_outbox(url: str, prefix: str, committed: dict[str, list[str]]) -> dict[str, Any]:
    """Exactly the committed messages, each once; per channel seq 1…n in the order of pos."""
    query(url, "SELECT relay.settle()")
    found = outbox_rows(url, prefix)
    assert set(found) == set(committed)
    for channel, rows in found.items():
        assert sorted(p for _, _, p in rows) == sorted(committed[channel]), channel
        assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1)), channel
        positions = [pos for _, pos, _ in rows]
        assert positions == sorted(positions) and len(set(positions)) == len(positions), channel
    return found


def frames_of(listener: NotifyListener, channel: str = "relay") -> list[frames.Frame]:
    """Every r1 frame NOTIFYed on ``channel`` up to the listener's sentinel."""
    if channel not in listener.channels:
        listener.listen(channel)
    parsed = [frames.parse(p.payload) for p in listener.collect(timeout=20.0)
              if p.channel == channel]
    assert None not in parsed
    return [f for f in parsed if f is not None]


def raw_listener(url: str) -> NotifyListener:
    """A connection LISTENing relay's channel, whose ``collect`` returns the frames unparsed."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    listener = NotifyListener(conn, shared=None)
    listener.listen("relay")
    return listener
