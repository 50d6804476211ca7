"""The listener with thousands of users attached, over its real socket and database: the
shared channel LISTENs one channel whatever the number of users, routes in memory and drops
what nobody here wants (counted); per-user LISTEN past 10,000 channels warns once, naming the
setting; PostgreSQL's NOTIFY queue is sampled as a gauge that warns above half full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from relay.dev.postgres import EmbeddedPostgres
from relay.schema import install_schema
from tests.listener_peer import ListenerProcess, WorkerSide
from tests.support import execute, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


def _attach_users(worker: WorkerSide, prefix: str, count: int) -> list[dict[str, Any]]:
    worker.send(b"".join(
        worker.attach_frame(f"{prefix}{i}", [f"user_Subscription_{prefix}{i}",
                                              f"user_Usage_{prefix}{i}"])
        for i in range(count)))
    answers = worker.answers(count, timeout=180)
    assert all(answer["ok"] for answer in answers)
    return answers


def _publish(url: str, channel: str, payload: dict[str, Any]) -> None:
    execute(url, "SELECT relay_publish(%s, %s::json)", (channel, json.dumps(payload)))


def _many_channels_warnings(listener: ListenerProcess) -> list[dict[str, Any]]:
    return [event for event in listener.log_events()
            if event.get("level") == "warning" and "LISTENing" in event.get("msg", "")]


def test_per_user_listen_over_10000_channels_warns_once_naming_the_setting(
        postgres_url: str, schema_installed: list[str], tmp_path: Path) -> None:
    listener = ListenerProcess(postgres_url, tmp_path, {"RELAY_USER_CHANNELS": "listen"})
    listener.start()
    try:
        worker = listener.worker()
        _attach_users(worker, "few", 4999)  # 9,998 user channels and the shared one
        assert worker.fresh_stats(lambda s: s.get("listened") == 9999)["userChannels"] == "listen"
        assert _many_channels_warnings(listener) == []

        _attach_users(worker, "more", 2)  # 10,003
        worker.fresh_stats(lambda s: s.get("listened") == 10003)
        _attach_users(worker, "most", 2)  # still over: no second warning
        stats = worker.fresh_stats(lambda s: s.get("listened") == 10007)
        assert stats["channels"] == 10006 and stats["connectedUsers"] == 5003

        [warning] = _many_channels_warnings(listener)
        assert "RELAY_USER_CHANNELS=off" in warning["msg"]
        assert "LISTENing 10003 channels" in warning["msg"]
        assert "per notification" in warning["msg"]  # the cost, not only the count
    finally:
        listener.stop()


def test_the_shared_channel_alone_listens_once_for_thousands_of_users_and_drops_strangers(
        postgres_url: str, schema_installed: list[str], tmp_path: Path) -> None:
    listener = ListenerProcess(postgres_url, tmp_path)  # auto: relay's SQL is installed
    listener.start()
    try:
        worker = listener.worker()
        _attach_users(worker, "crowd", 6000)
        stats = worker.fresh_stats(lambda s: s.get("connectedUsers") == 6000)
        assert (stats["listened"], stats["channels"], stats["userChannels"]) == (1, 12000, "off")
        dropped = stats["notificationsDropped"].get("unsubscribed", 0)

        # One notification for a user nobody here has, then one for a user we have: the
        # first is dropped (never numbered nor sent), the second arrives, and it is next.
        _publish(postgres_url, "user_Usage_stranger", {"for": "nobody"})
        _publish(postgres_url, "user_Usage_crowd4321", {"for": "crowd4321"})
        channel, message = worker.update()
        assert channel == "user_Usage_crowd4321" and message["data"] == {"for": "crowd4321"}
        assert message["seq"] == 1
        stats = worker.fresh_stats(
            lambda s: s["notificationsDropped"].get("unsubscribed", 0) >= dropped + 1)
        assert stats["notificationsDropped"]["unsubscribed"] == dropped + 1
        assert _many_channels_warnings(listener) == []
    finally:
        listener.stop()


def test_a_foreign_notification_on_relays_channel_is_counted_and_dropped(
        postgres_url: str, schema_installed: list[str], tmp_path: Path) -> None:
    listener = ListenerProcess(postgres_url, tmp_path)
    listener.start()
    try:
        worker = listener.worker()
        _attach_users(worker, "fg", 1)
        for payload in ("hello", "r1 n 0 0 0 999 user_Usage_fg0 {}", "r1 n x 0 0 3 abc {}",
                        "r1 n 0 0 0 12 user_Usage_fg0{}"):
            execute(postgres_url, "SELECT pg_notify('relay', %s)", (payload,))
        _publish(postgres_url, "user_Usage_fg0", {"after": "garbage"})
        channel, message = worker.update()
        assert message["data"] == {"after": "garbage"} and message["seq"] == 1
        stats = worker.fresh_stats(lambda s: s["notificationsDropped"].get("foreign", 0) >= 4)
        assert stats["notificationsDropped"]["foreign"] == 4
    finally:
        listener.stop()


@pytest.fixture
def small_queue_postgres(tmp_path: Path) -> Any:
    """A PostgreSQL of the test's own whose NOTIFY queue is as small as it can be (64 pages,
    512 KB; the setting exists since PostgreSQL 17)."""
    server = EmbeddedPostgres(tmp_path / "pg", settings={"max_notify_queue_pages": 64})
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        if "max_notify_queue_pages" in str(exc):
            pytest.skip("this PostgreSQL has no max_notify_queue_pages (before 17)")
        raise
    install_schema(server.url)
    try:
        yield server
    finally:
        server.stop("immediate")


def test_notify_queue_usage_is_a_gauge_that_warns_above_half_full(
        small_queue_postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    url = small_queue_postgres.url
    listener = ListenerProcess(url, tmp_path / "listener", {"RELAY_DB_CHECK_INTERVAL": "0.2"})
    listener.start()
    # A session that LISTENs and then stays in a transaction reads nothing until it ends:
    # PostgreSQL keeps every notification since for it, and the queue fills.
    blocker = psycopg2.connect(url)
    blocker.autocommit = True
    try:
        worker = listener.worker()
        assert worker.fresh_stats(lambda s: s.get("database") == "connected")[
            "notifyQueueUsage"] == 0.0
        with blocker.cursor() as cursor:
            cursor.execute("LISTEN anything")
        blocker.autocommit = False
        with blocker.cursor() as cursor:
            cursor.execute("SELECT 1")  # the transaction is open from here
        filler = "x" * 7000
        for _ in range(40):  # 10 x 7 KB each, into a 512 KB queue: full before the end
            try:
                execute(url, "SELECT pg_notify('filler', %s || g) FROM generate_series(1, 10) g",
                        (filler,))
            except psycopg2.Error:  # full: exactly what the gauge is for
                break
        stats = worker.fresh_stats(lambda s: s.get("notifyQueueUsage", 0) >= 0.5)
        assert stats["notifyQueueUsage"] <= 1.0
        wait_for(lambda: [e for e in listener.log_events() if "NOTIFY queue is" in
                          e.get("msg", "") and e["level"] == "warning"], 10,
                 message="the queue warning")

        blocker.rollback()  # the reader catches up; the queue empties
        worker.fresh_stats(lambda s: s.get("notifyQueueUsage", 1) < 0.4, timeout=20)
        wait_for(lambda: [e for e in listener.log_events() if "back to" in e.get("msg", "")],
                 10, message="the all-clear")
        warnings = [e for e in listener.log_events()
                    if "NOTIFY queue is" in e.get("msg", "") and e["level"] == "warning"]
        assert len(warnings) == 1  # one warning per crossing, not one per sample
        assert "fails at commit" in warnings[0]["msg"]
    finally:
        blocker.close()
        listener.stop()
