"""Installing and upgrading relay's SQL, and old and new versions side by side.

``python -m relay db install`` is idempotent and version-aware: twice changes nothing (the
epoch, the settings, the triggers); over version 1 (the shared channel without the outbox,
tests/fixtures/relay_sql_v1/, what main shipped before the durable history) it upgrades and
keeps what the operator set, and over version 2 (tests/fixtures/relay_sql_v2/: the same
history, each channel's head kept in relay.channel by every commit) it keeps the epoch and
every channel's numbering; a newer version is refused with one line. During a rolling deploy
relays and SQL of both versions meet, in either order (Fly's release_command installs the SQL
before the new machines start; a roll-back of the relays meets the newer SQL):

* old SQL + new listener: version 1 has no ``relay.hello(integer)`` — a durable listener gets
  ``undefined_function`` and falls back to version 1's ``relay.hello()`` (outbox off);
* new SQL + old listener: the relay in this repository runs main's listener of version 1, which
  drops numbered frames. The install registers it, and its ``relay.hello()`` holds the outbox
  off: its clients keep every update, through the upgrade and after a roll-back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from relay.schema import SQL_VERSION, install_schema, installed_version
from tests.outbox_support import frames_of, publish, query, raw_listener
from tests.support import ROOT, Client, RelayProcess, execute, wait_for

pytestmark = pytest.mark.slow  # every test here boots PostgreSQL (and some a relay)

V1_SQL = Path(__file__).resolve().parent / "fixtures" / "relay_sql_v1"
V2_SQL = Path(__file__).resolve().parent / "fixtures" / "relay_sql_v2"


def _install_fixture(url: str, directory: Path) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            for path in sorted(directory.glob("*.sql")):
                cursor.execute(path.read_text(encoding="utf-8"))
    finally:
        conn.close()


def _install_v1(url: str) -> None:
    """What a database that ran main's `relay db install` before the durable history holds."""
    _install_fixture(url, V1_SQL)


def _install_v2(url: str) -> None:
    """Version 2: the durable history with every channel's head updated by each commit."""
    _install_fixture(url, V2_SQL)


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "RELAY_CHANNELS", "RELAY_NOTIFY_CHANNEL")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def _state(url: str) -> dict[str, Any]:
    [(version, epoch, settings, triggers, functions)] = query(url, """
        SELECT (SELECT version FROM relay.meta), (SELECT epoch FROM relay.meta),
               (SELECT json_object_agg(name, value) FROM relay.settings),
               (SELECT count(*) FROM pg_trigger WHERE tgname = 'relay_commit'),
               (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'relay')""")
    return {"version": version, "epoch": epoch, "settings": settings, "triggers": triggers,
            "functions": functions}


def test_install_twice_changes_nothing_but_function_bodies(empty_database: str) -> None:
    url = empty_database
    result = _relay_cli("db", "install", DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert f"relay's SQL is at version {SQL_VERSION} (new install)" in result.stdout
    assert "held off: no relay listener of version 2 has connected yet" in result.stdout
    query(url, "SELECT relay.hello(2)")  # the first relay that keeps the durable history
    query(url, "SELECT relay.set('retention', '30 minutes')")
    publish_conn = psycopg2.connect(url)
    try:
        publish(publish_conn, "A", '{"n": 1}')
        publish_conn.commit()
    finally:
        publish_conn.close()
    before = _state(url)
    again = _relay_cli("db", "install", DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert f"relay's SQL is at version {SQL_VERSION}\n" in again.stdout
    assert "held off" not in again.stdout
    assert _state(url) == before
    assert before["triggers"] == 2 and before["settings"]["retention"] == "30 minutes"
    assert query(url, "SELECT count(*) FROM relay.outbox") == [(1,)]


def test_upgrading_version_1_keeps_the_settings_and_a_durable_listener_starts_the_outbox(
        empty_database: str) -> None:
    url = empty_database
    _install_v1(url)
    query(url, "SELECT relay.set('notify_channel', 'relay_app')")
    query(url, "SELECT relay.set('legacy_notify', 'on')")
    assert installed_version(url) == 1
    listener = raw_listener(url)
    try:
        listener.listen("relay_app")
        publish(listener.conn, "A", '{"v1": 1}')
        assert [(f.kind, f.body) for f in frames_of(listener, "relay_app")] == [
            ("n", '{"v1": 1}')]
        result = _relay_cli("db", "install", DATABASE_URL=url)
        assert result.returncode == 0, result.stderr
        assert "(upgraded from version 1)" in result.stdout
        # No relay listener is connected: held until one that keeps the history says hello.
        assert "held off: no relay listener of version 2 has connected yet" in result.stdout
        state = _state(url)
        assert state["version"] == SQL_VERSION and state["epoch"]
        assert state["settings"]["notify_channel"] == "relay_app"
        assert state["settings"]["legacy_notify"] == "on"
        assert state["settings"]["outbox"] == "on"
        publish(listener.conn, "A", '{"v2": 1}')
        query(url, "SELECT relay.hello(2)")
        publish(listener.conn, "A", '{"v2": 2}')
        assert [(f.kind, f.body) for f in frames_of(listener, "relay_app")] == [
            ("i", str(SQL_VERSION)), ("n", '{"v2": 1}'), ("c", "outbox"), ("m", '{"v2": 2}')]
        assert query(url, "SELECT payload::text FROM relay.outbox") == [('{"v2": 2}',)]
    finally:
        listener.conn.close()


def test_the_release_of_the_hold_splits_the_stream_unnumbered_before_numbered_after(
        empty_database: str) -> None:
    """A transaction that published while the outbox was held and commits after the release
    is numbered at its COMMIT (it staged), so nothing unnumbered follows the release's kind c
    frame; the frame carries the position where numbering resumed, and the hello that released
    it says so (``releasedAt``: its caller switches at that frame)."""
    url = empty_database
    install_schema(url)  # held: no listener of version 2 has said hello yet
    listener = raw_listener(url)
    app = psycopg2.connect(url)
    try:
        publish(app, "A", '{"before": "release"}')  # in a transaction, still open
        [(hello,)] = query(listener.conn, "SELECT relay.hello(2)")
        app.commit()
        publish(listener.conn, "A", '{"after": "release"}')
        got = [(f.kind, f.pos, f.body) for f in frames_of(listener)]
        assert got == [("c", 0, "outbox"), ("m", 1, '{"before": "release"}'),
                       ("m", 2, '{"after": "release"}')], got
        assert hello["outbox"] is True and hello.get("releasedAt") == 0
        [(again,)] = query(listener.conn, "SELECT relay.hello(2)")
        assert again["releasedAt"] is None  # released already: not by this call
    finally:
        app.close()
        listener.conn.close()


def test_an_upgrade_while_an_app_transaction_is_open_waits_for_nothing(
        empty_database: str) -> None:
    url = empty_database
    _install_v1(url)
    app = psycopg2.connect(url)
    try:
        publish(app, "A", '{"published under": 1}')  # version 1's relay_publish: NOTIFY queued
        done = threading.Event()
        failures: list[BaseException] = []

        def upgrade() -> None:
            try:
                install_schema(url)
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
            done.set()

        threading.Thread(target=upgrade).start()
        assert done.wait(30) and not failures, failures  # lock_timeout is 3 s
        app.commit()
    finally:
        app.close()
    assert installed_version(url) == SQL_VERSION


def test_a_newer_relay_sql_is_refused_with_one_line_and_left_alone(empty_database: str) -> None:
    url = empty_database
    install_schema(url)
    query(url, f"UPDATE relay.meta SET version = {SQL_VERSION + 1}")
    before = _state(url)
    result = _relay_cli("db", "install", DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "refusing to downgrade" in line and f"version {SQL_VERSION + 1}" in line
    assert _state(url) == before


def test_version_1s_installer_refuses_to_downgrade_version_2(empty_database: str) -> None:
    # A relay rolled back to version 1 runs its release command: its own guard refuses, and the
    # newer SQL stays (it serves that relay: see the roll-back test below).
    url = empty_database
    install_schema(url)
    with pytest.raises(psycopg2.errors.RaiseException, match="refusing to downgrade"):
        _install_v1(url)
    assert installed_version(url) == SQL_VERSION


def test_version_2s_installer_refuses_to_downgrade_version_3(empty_database: str) -> None:
    url = empty_database
    install_schema(url)
    with pytest.raises(psycopg2.errors.RaiseException, match="refusing to downgrade"):
        _install_v2(url)
    assert installed_version(url) == SQL_VERSION


def test_upgrading_version_2_keeps_the_epoch_and_every_channel_counts_on(
        empty_database: str) -> None:
    """Version 2's heads (relay.channel, written by every commit) and version 3's (the newest
    outbox row, else relay.channel) agree: a channel whose rows all expired under version 2
    and one with rows in the outbox both go on from their last seq after the upgrade."""
    url = empty_database
    _install_v2(url)
    query(url, "SELECT relay.hello(2)")
    conn = psycopg2.connect(url)
    try:
        for channel, n in (("A", 1), ("A", 2), ("A", 3), ("B", 1), ("B", 2)):
            publish(conn, channel, json.dumps({"n": n}))
            conn.commit()
        query(url, "UPDATE relay.outbox SET created_at = now() - interval '1 hour' "
                   "WHERE channel = 'A'")
        assert query(url, "SELECT relay.cleanup()") == [(3,)]  # version 2's cleanup
        [(epoch,)] = query(url, "SELECT epoch FROM relay.meta")
        result = _relay_cli("db", "install", DATABASE_URL=url)
        assert result.returncode == 0, result.stderr
        assert "(upgraded from version 2)" in result.stdout
        assert query(url, "SELECT version, epoch FROM relay.meta") == [(SQL_VERSION, epoch)]
        publish(conn, "A", '{"n": 4}')
        conn.commit()
        for n in (3, 4):
            publish(conn, "B", json.dumps({"n": n}))
        conn.commit()
    finally:
        conn.close()
    assert query(url, "SELECT channel, seq, payload::text FROM relay.outbox "
                      "WHERE pos > 5 ORDER BY pos") == [
        ("A", 4, '{"n": 4}'), ("B", 3, '{"n": 3}'), ("B", 4, '{"n": 4}')]


def test_old_sql_new_listener_a_durable_listener_falls_back_to_version_1s_hello(
        empty_database: str) -> None:
    url = empty_database
    _install_v1(url)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with pytest.raises(psycopg2.errors.UndefinedFunction):
            query(conn, "SELECT relay.hello(2)")
        [(hello,)] = query(conn, "SELECT relay.hello()")
        assert hello["outbox"] is False and hello["version"] == 1
    finally:
        conn.close()


# ----- new SQL and old listeners, with real relays (main's listener of version 1) -----


def _publisher(url: str, channel: str, stop: threading.Event,
               sent: list[int]) -> threading.Thread:
    """Publishes {"n": 1, 2, …} on ``channel`` in its own transactions until ``stop``."""
    def run() -> None:
        conn = psycopg2.connect(url)
        try:
            n = 0
            while not stop.is_set():
                n += 1
                publish(conn, channel, json.dumps({"n": n}))
                conn.commit()
                sent.append(n)
                stop.wait(0.005)
        finally:
            conn.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _updates(client: Client, channel: str, count: int) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    """``count`` updates of ``channel``, and the resyncs that came among them."""
    got: list[dict[str, Any]] = []
    resyncs: list[dict[str, Any]] = []
    while len(got) < count:
        message = client.recv(15)
        assert message is not None and message["type"] in ("update", "resync"), message
        if message["type"] == "resync":
            resyncs.append({**message, "after": len(got)})
        elif message["channel"] == channel:
            got.append(message)
    return got, resyncs


def _install_while_publishing(url: str, client: Client, channel: str
                               ) -> tuple[subprocess.CompletedProcess[str], list[int],
                                          list[dict[str, Any]], list[dict[str, Any]]]:
    """`db install` (Fly's release_command) while a writer publishes on ``channel``: 20
    updates before it, 40 after it. Returns the install's result, what was sent, and the
    updates and resyncs ``client`` got for them."""
    stop = threading.Event()
    sent: list[int] = []
    thread = _publisher(url, channel, stop, sent)
    try:
        wait_for(lambda: len(sent) >= 20, 15, 0.01, "updates before the upgrade")
        result = _relay_cli("db", "install", DATABASE_URL=url)
        assert result.returncode == 0, result.stderr
        mark = len(sent)
        wait_for(lambda: len(sent) >= mark + 40, 15, 0.01, "updates after the upgrade")
    finally:
        stop.set()
        thread.join()
    updates, resyncs = _updates(client, channel, len(sent))
    return result, sent, updates, resyncs


def test_an_upgrade_under_running_relays_loses_no_update(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    """Version 1's SQL, a relay running on it (numbers in memory), writers publishing: `db
    install` of version 2 (Fly's release_command) holds the outbox while the running
    listener has not said hello(2); it says so on the install's kind i, the outbox comes on,
    and the client gets every update once, in order, with exactly one resync where its
    history moved to the database's."""
    url = empty_database
    _install_v1(url)
    relay = relay_factory({"DATABASE_URL": url})
    client = relay.connect("up1")
    channel = "user_Usage_up1"
    result, sent, updates, resyncs = _install_while_publishing(url, client, channel)
    assert [u["data"]["n"] for u in updates] == sent  # every one, once, in order
    assert len(resyncs) == 1 and resyncs[0]["reason"] == "history changed", resyncs
    switch = resyncs[0]["after"]
    before, after = updates[:switch], updates[switch:]
    assert after and all(len(u["cursor"].split(":")) == 3 for u in after)  # the database's
    for part in (before, after):
        assert [u["seq"] for u in part] == list(range(part[0]["seq"],
                                                      part[0]["seq"] + len(part)))
    assert "held off" in result.stdout and "version 1" in result.stdout  # said so
    client.close()


def test_an_upgrade_from_version_2_under_a_running_relay_costs_no_resync(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    """Version 2's SQL, a relay keeping the durable history on it, writers publishing: `db
    install` of version 3 changes how COMMIT finds a channel's head, not the history: the
    client gets every update once, in order, its seq gap-free across the upgrade, and no
    resync (same epoch, same numbers)."""
    url = empty_database
    _install_v2(url)
    relay = relay_factory({"DATABASE_URL": url})
    client = relay.connect("up2")
    channel = "user_Usage_up2"
    result, sent, updates, resyncs = _install_while_publishing(url, client, channel)
    assert "(upgraded from version 2)" in result.stdout
    assert resyncs == []
    assert [u["data"]["n"] for u in updates] == sent  # every one, once, in order
    seqs = [u["seq"] for u in updates]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert query(url, "SELECT seq FROM relay.heads(%s)", ([channel],)) == [(seqs[-1],)]
    client.close()


def test_a_relay_rolled_back_to_version_1_hears_the_newer_sql(
        relay_factory: Callable[..., RelayProcess], empty_database: str) -> None:
    """A listener of version 1 (main's, before the durable history: it calls relay.hello()
    and drops numbered frames) holds the outbox off while it is connected: writers send
    kind n, which it hears — and so does a relay of this version meanwhile."""
    url = empty_database
    install_schema(url)
    # A durable listener was there and is gone; the outbox is on.
    query(url, "SELECT relay.hello(2)")
    listener = raw_listener(url)
    old = psycopg2.connect(url, application_name="relay-listener")  # version 1's listener
    old.autocommit = True
    try:
        publish(listener.conn, "user_Usage_rb1", '{"before": "roll-back"}')
        assert [f.kind for f in frames_of(listener)] == ["m"]
        query(old, "SELECT relay.hello()")  # the rolled-back relay connects
        relay = relay_factory({"DATABASE_URL": url})
        client = relay.connect("rb1")
        execute(url, "SELECT relay_publish('user_Usage_rb1', '{\"after\": \"roll-back\"}')")
        assert client.expect("update")["data"] == {"after": "roll-back"}
        assert [(f.kind, f.body) for f in frames_of(listener)][-1] == (
            "n", '{"after": "roll-back"}')
        client.close()
    finally:
        old.close()
        listener.conn.close()

