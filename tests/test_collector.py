"""A worker's full garbage collections walk only what came since the last one, and freezing
what survives them keeps nothing alive: relay.collector with real connections over
socket pairs, each scenario in a gevent-patched subprocess of its own
(tests/collector_scenarios.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT


def run(name: str, tmp_path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "tests.collector_scenarios", name,
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_full_collection_freezes_its_survivors(tmp_path: Path) -> None:
    # 2,000 held connections: the next full collection walks none of their objects (a
    # handful of the scenario's own are left), where it walked ~30,000 before.
    result = run("survivors_frozen", tmp_path)
    assert result["freezes"] >= 1
    assert result["walked_by_a_full_collection"] < 1_000
    assert result["frozen_per_connection"] >= 10  # both ends' sockets and watchers, and relay's


def test_connections_frozen_while_held_are_freed_once_closed(tmp_path: Path) -> None:
    # 10,000 connections, each held through a full collection (so frozen), then closed by
    # its client: freed by their reference counts, frozen or not. A leak of one connection's
    # objects each would be ~150,000 objects and ~50 MB.
    result = run("open_close_cycles", tmp_path)
    assert result["open"] == 0
    assert result["freezes"] >= 40
    assert result["tracked_growth"] < 2_000
    assert result["rss_growth_kb"] < 4_096


def test_a_cycle_frozen_while_alive_is_freed_after_the_thaw(tmp_path: Path) -> None:
    assert run("frozen_cycle_freed_after_thaw", tmp_path) == {
        "kept_while_frozen": True, "freed_after_thaw": True, "thaws": 1}


def test_a_handshake_leaves_nothing_for_the_cyclic_collector(tmp_path: Path) -> None:
    # 100 upgrades through relay's handler and app, each client then gone: gevent-websocket's
    # WebSocket object, which relay never used, built a class in its finaliser on every one
    # (140 objects of cyclic garbage per 100 handshakes).
    assert run("handshake_leaves_no_cycles", tmp_path) == {
        "upgraded": 100, "open": 0, "cyclic_garbage": 0}


def test_the_listeners_full_collections_skip_what_it_holds(tmp_path: Path) -> None:
    # The listener process freezes too: 10,000 channels' tracked objects held through a full
    # collection are out of the next one's walk (they were all walked before), and the
    # channel counts still close every channel once its users are gone.
    result = run("listener_heap_frozen", tmp_path)
    assert result["walked_by_a_full_collection"] < 5_000
    assert result["frozen"] is True
    assert result["closed"] == 10_000
    assert result["open"] == 0
