"""EmbeddedPostgres against the real binaries: start, stop, restart, ports, stale state.

One cluster for the module (a fresh start takes well under a second); tests that stop it
leave it running again for the next.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest

from relay.dev.postgres import EmbeddedPostgres, EmbeddedPostgresError, ensure_dev_database

pytestmark = pytest.mark.slow  # every test here boots real processes

running_as_root = os.geteuid() == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    # pytest makes its temporary directories 0700: as root this also checks that the pgserver
    # account can reach a data directory below private parents.
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("devdb") / "nested" / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def running(server: EmbeddedPostgres) -> EmbeddedPostgres:
    server.start()  # a previous test may have stopped it
    return server


def _query(url: str, statement: str) -> tuple:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchone()
    finally:
        conn.close()


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def test_url_connects_over_tcp_to_loopback(running: EmbeddedPostgres) -> None:
    assert running.url == f"postgresql://postgres@127.0.0.1:{running.port}/postgres"
    assert _query(running.url, "SELECT inet_server_addr()::text, current_user") == (
        "127.0.0.1/32", "postgres",
    )


def test_listens_on_no_address_but_loopback(running: EmbeddedPostgres) -> None:
    listening = [
        conn.laddr
        for conn in psutil.Process(_postmaster_pid(running)).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening == [("127.0.0.1", running.port)]


def test_unix_socket_lives_in_the_data_dir(running: EmbeddedPostgres) -> None:
    assert running.socket_dir == running.data_dir
    conn = psycopg2.connect(
        host=str(running.socket_dir), port=running.port, user="postgres", dbname="postgres"
    )
    conn.close()


def test_settings_fit_many_test_connections_in_little_memory(running: EmbeddedPostgres) -> None:
    assert _query(running.url, "SHOW max_connections") == ("400",)
    assert _query(running.url, "SHOW shared_buffers") == ("32MB",)
    assert _query(running.url, "SHOW server_encoding") == ("UTF8",)


def test_server_log_is_written_in_the_data_dir(running: EmbeddedPostgres) -> None:
    assert running.log_path.parent == running.data_dir
    assert "ready to accept connections" in running.log_path.read_text()


def test_start_when_running_is_a_no_op(running: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(running)
    running.start()
    assert _postmaster_pid(running) == pid
    assert running.is_running()


def test_ensure_dev_database_reuses_the_running_server(running: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(running)
    reused = ensure_dev_database(running.data_dir)
    assert reused.url == running.url
    assert _postmaster_pid(running) == pid


def test_restart_keeps_data_and_port(running: EmbeddedPostgres) -> None:
    conn = psycopg2.connect(running.url)
    with conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS kept (value text)")
        cursor.execute("INSERT INTO kept VALUES ('survives restart')")
    conn.close()
    port, pid = running.port, _postmaster_pid(running)

    running.restart()

    assert running.port == port
    assert _postmaster_pid(running) != pid
    assert _query(running.url, "SELECT count(*) FROM kept WHERE value = 'survives restart'") >= (
        1,
    )


def test_stop_then_is_running_is_false_and_stop_again_is_a_no_op(
    running: EmbeddedPostgres,
) -> None:
    running.stop()
    assert not running.is_running()
    running.stop()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(running.url, connect_timeout=2)


def test_stop_rejects_an_unknown_mode(running: EmbeddedPostgres) -> None:
    with pytest.raises(ValueError, match="stop mode"):
        running.stop("sudden")
    assert running.is_running()


def test_a_new_handle_reuses_the_persisted_port(running: EmbeddedPostgres) -> None:
    running.stop()
    again = EmbeddedPostgres(running.data_dir)
    assert again.port == running.port
    again.start()
    assert again.is_running() and running.is_running()
    assert _query(again.url, "SELECT 1") == (1,)


def test_context_manager_starts_and_stops(running: EmbeddedPostgres) -> None:
    running.stop()
    with EmbeddedPostgres(running.data_dir) as pg:
        assert pg.is_running()
        assert _query(pg.url, "SELECT 1") == (1,)
    assert not running.is_running()


def test_start_after_a_crashed_postmaster(running: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(running)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running.is_running() and time.monotonic() < deadline:  # a zombie counts as gone
        time.sleep(0.01)
    assert not running.is_running()
    assert (running.data_dir / "postmaster.pid").exists()  # left behind by the crash

    running.start()

    assert _query(running.url, "SELECT 1") == (1,)


def test_start_waits_for_orphans_of_a_crashed_postmaster(running: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(running)
    orphan = psutil.Process(pid).children()[0]
    orphan.suspend()  # keeps the old shared memory attached until resumed
    os.kill(pid, signal.SIGKILL)
    while running.is_running():
        time.sleep(0.01)
    resume = threading.Timer(0.5, orphan.resume)
    resume.start()
    try:
        running.start()
    finally:
        resume.cancel()
        orphan.resume()

    assert _query(running.url, "SELECT 1") == (1,)
    assert "still in use" in running.log_path.read_text()  # the first attempt did collide


def test_stale_postmaster_pid_naming_a_live_process_does_not_block_start(
    running: EmbeddedPostgres,
) -> None:
    running.stop()
    pid_file = running.data_dir / "postmaster.pid"
    # Our own PID: alive, but not a postmaster - as after a reboot that reused the number.
    pid_file.write_text(f"{os.getpid()}\n{running.data_dir}\n0\n{running.port}\n")
    assert not running.is_running()

    running.start()

    assert _query(running.url, "SELECT 1") == (1,)


def test_explicit_port_is_used_and_persisted(tmp_path: Path) -> None:
    port = EmbeddedPostgres(tmp_path / "probe").port  # a free loopback port
    with EmbeddedPostgres(tmp_path / "pg", port=port) as pg:
        assert pg.url.endswith(f":{port}/postgres")
        assert _query(pg.url, "SELECT 1") == (1,)
    assert EmbeddedPostgres(tmp_path / "pg").port == port


def _occupy(port: int) -> socket.socket:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    return squatter


def test_a_freshly_picked_port_that_got_taken_is_replaced_but_a_persisted_one_is_not(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    picked = pg.port
    with _occupy(picked):
        pg.start()
        try:
            assert pg.port != picked
            assert _query(pg.url, "SELECT 1") == (1,)
        finally:
            pg.stop()

    with _occupy(pg.port), pytest.raises(EmbeddedPostgresError, match="could not bind"):
        EmbeddedPostgres(tmp_path / "pg").start()  # make run's URL must not move silently


@pytest.mark.skipif(not running_as_root, reason="user switching happens only as root")
def test_as_root_runs_as_pgserver_and_only_adds_search_permission(
    running: EmbeddedPostgres,
) -> None:
    assert psutil.Process(_postmaster_pid(running)).username() == "pgserver"
    private_parent = running.data_dir.parent.parent  # made 0700 by pytest
    assert private_parent.stat().st_mode & 0o777 == 0o701
