"""A worker's long-lived greenlets never die of one failure. The link to the listener: a
listener that resets the link during the hello (a listener being killed still accepts from
its backlog, seen in CI), or a bug while handling its stream, makes the link connect again;
either used to end the link's greenlet, and the worker then answered every new WebSocket
with 1013 for the rest of its life. Housekeeping: one connection whose tick fails is closed
1011, and every other keeps its pings and token expiry; a pong that has arrived but that the
worker has not read yet (the worker was held up) keeps its connection. A finished connection
is freed at once, not by the next full garbage collection. A lone pong is taken without a
greenlet, and still counts toward the client's message rate.

Each scenario runs in a gevent-patched subprocess, as in a worker (tests/gevent_scenarios.py),
with real Unix sockets for the link."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT


def run(name: str, tmp_path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "tests.gevent_scenarios", name, str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_reset_during_the_hello_is_retried(tmp_path: Path) -> None:
    assert run("hello_reset", tmp_path) == {"connected": True, "connects": 2, "hellos": 1}


def test_a_bug_while_reading_the_stream_reconnects(tmp_path: Path) -> None:
    assert run("read_bug", tmp_path) == {"connected": True, "reads": 2, "hellos": 2}


def test_a_listener_that_binds_its_socket_late_is_not_warned_about_one_still_absent_is(
        tmp_path: Path) -> None:
    assert run("late_listener", tmp_path) == {
        "connected": True, "hellos": 1, "warnings": ["listener not reachable (absent)"]}


def test_a_failing_tick_closes_that_connection_and_housekeeping_goes_on(tmp_path: Path
                                                                       ) -> None:
    assert run("housekeeping_bug", tmp_path) == {"healthy_ticks": True,
                                                 "broken_closed_with": [1011]}


def test_a_pong_waiting_in_the_socket_keeps_the_connection(tmp_path: Path) -> None:
    # A worker held up for seconds runs its heartbeat check on time, ahead of the greenlets
    # that read the pongs waiting in its sockets (bench scale, 75,000 connections on a starved
    # machine: 70,000 closed 4011 within half a minute).
    assert run("late_pong", tmp_path) == {"answered_kept": True, "pong_read": True,
                                          "answered_open": True, "silent_closed_with": 4011}


def test_a_finished_connection_is_freed_without_the_collector(tmp_path: Path) -> None:
    # Its frame reader's rate-limit hook referred back to it: every closed connection waited
    # for a full collection, which walks every object of a worker (at 17,000 connections,
    # 0.7-2 s on a busy machine, bench scale).
    assert run("finished_connection_freed", tmp_path) == {"open": 0, "freed": True}


def test_a_pong_is_taken_without_a_greenlet_and_within_the_rate_limit(tmp_path: Path) -> None:
    # Pongs are most of what a worker reads (5,000 a second at 100,000 connections): a lone
    # one, as the bundled client writes it, costs no greenlet and no reader's pass; a pong
    # written otherwise is still understood, and a flood of them is still a policy violation.
    assert run("pong_without_greenlet", tmp_path) == {
        "canonical": {"answered": True, "greenlets": 0},
        "spaced": {"answered": True, "greenlets": 1},
        "flood_closed_with": 1008}


def test_a_drain_behind_its_schedule_still_ends_on_time(tmp_path: Path) -> None:
    # On a starved machine the closes fall behind the window; the wait for their answers
    # counted from the last close then put the exit 15 s after SIGTERM (bench scale, 100,000
    # clients, drain 10 s, promised drain + 3 s). Here the closes take 2 s of a 0.5 s window.
    out = run("drain_behind_schedule", tmp_path)
    assert out["closed"] == [1012] and out["closes"] == 100, out
    assert out["seconds"] < out["budget"] + 0.4, out  # was 2 s of closes + 3 s


def test_the_drain_closes_first_those_whose_ping_is_due_first(tmp_path: Path) -> None:
    # With the window (10 s) shorter than the ping interval (20 s), nobody is then pinged
    # during the drain: at 100,000 clients half of them were, 50,000 pings and pongs on a
    # machine whose drain fell behind.
    assert run("drain_order", tmp_path) == {"closed": 200, "by_next_ping": True}


def test_a_drain_tells_the_listener_of_its_finished_connections_together(tmp_path: Path
                                                                        ) -> None:
    # One by one, each client's answer woke the listener for its DETACH (3,000 clients, 1
    # worker: 73-83 us of the listener's CPU and 173-193 us of the worker's per client;
    # together, 67-80 and 157-180). Every one is still told, once.
    assert run("drain_releases", tmp_path) == {"released": 50, "told": 50, "inside_a_close": 0}
