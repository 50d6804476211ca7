"""bench/writer.py's ceiling: what each of its transactions does, against a real PostgreSQL.

Its rates are the bench's to print, not asserted here; what is tested is that each variant
commits the transactions it says (a row and one message each with ``write``), every message
reaches a listener, and the table it made for its rows is gone afterwards."""

from __future__ import annotations

import psycopg2
import pytest

from bench.writer import CEILING_TABLE, ceiling
from relay.schema import install_schema

pytestmark = pytest.mark.slow


def _count(url: str, query: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("publish", ["notify", "publish"])
def test_each_written_transaction_writes_a_row_and_sends_one_message(
        empty_database: str, publish: str) -> None:
    install_schema(empty_database)
    result = ceiling(empty_database, 2, 0.5, plain=False, publish=publish, write=True)
    assert result["errors"] == []
    assert result["commits"] > 0 and result["write"] is True
    # every commit's message was heard (a few may land after the clock stopped)
    assert result["received"] >= result["commits"]
    if publish == "publish":
        # numbered at commit: one outbox row per message (each writer's last may have committed
        # after the clock stopped), none left unnumbered
        rows = _count(empty_database, "SELECT count(*) FROM relay.outbox")
        assert result["commits"] <= rows <= result["commits"] + 2
        assert _count(empty_database, "SELECT count(*) FROM relay.staged") == 0
    assert _count(empty_database, f"SELECT count(*) FROM pg_class WHERE relname = "
                                  f"'{CEILING_TABLE}'") == 0


def test_the_plain_written_variant_sends_nothing(empty_database: str) -> None:
    result = ceiling(empty_database, 1, 0.3, plain=True, write=True)
    assert result["errors"] == [] and result["commits"] > 0
    assert result["received"] == 0
