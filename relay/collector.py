"""The cyclic garbage collector in a worker or the listener: what its full collections walk.

A full (generation 2) collection walks every object the collector tracks and holds the
worker's loop while it does: no ping, no delivery, no handshake. A held connection is ~15
tracked objects (the connection, its session, writer and reader, its socket and watchers),
so at 17,000 connections a worker's full collection walked ~300,000 objects: 60 ms of CPU,
and 0.5-1.4 s of wall time on a machine starved by a reconnect storm (bench scale, run 6).

The listener is the same case: at 100,000 held users its channel counts, histories and
cursors made a full collection 75 ms in a steady stream (every ~30-60 s at 500 messages/s),
every notification of that moment late by as much (bench: docs/performance.md, steady).

``Collector.install`` (the worker's ``run``, once its app is loaded; ``run_listener``)
freezes what exists at boot, and then, after every full collection, what survived it
(``gc.freeze``): the next full collection walks only what came since, so its pause follows
the process's growth since the last one, not its size. Freezing takes objects out of the
cyclic collector's sight, not out of reference counting: a closed connection is still freed
at once by its reference count (nothing of it forms a cycle; tests/test_worker_resilience.py
checks it). What a frozen object could still keep is a reference cycle of its own that
became garbage after it was frozen: every ``THAW_SECONDS`` the process gives everything back
to the collector (``gc.unfreeze``), so the next full collection walks it all once and frees
such cycles, and freezing resumes after it.
"""

from __future__ import annotations

import gc
import time
from typing import Any

THAW_SECONDS = 600.0


class Collector:
    """Freezes the survivors of each full collection; thaws every ``thaw_seconds``."""

    def __init__(self, thaw_seconds: float = THAW_SECONDS) -> None:
        self.thaw_seconds = thaw_seconds
        self.freezes = 0  # full collections whose survivors were frozen
        self.thaws = 0
        self._thaw_at = time.monotonic() + thaw_seconds

    def install(self) -> None:
        """Collect and freeze what exists now (the app, its modules: they live as long as the
        worker), then freeze after every full collection."""
        gc.collect()
        gc.freeze()
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        if time.monotonic() >= self._thaw_at:
            self.thaw()
            return
        # A full collection has just merged the younger generations into the oldest and
        # kept only what is reachable: exactly what is frozen here.
        gc.freeze()
        self.freezes += 1

    def thaw(self) -> None:
        """Give every frozen object back to the collector: the next full collection walks
        them all once (and frees any cycle that became garbage while frozen)."""
        gc.unfreeze()
        self.thaws += 1
        self._thaw_at = time.monotonic() + self.thaw_seconds
