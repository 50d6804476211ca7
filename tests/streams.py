"""Helpers of the fault tests that watch a stream of updates while something breaks.

``NotifyWriter`` sends ``{"n": 1}``, ``{"n": 2}``, … on one channel from a thread, noting when
each statement began. ``MessageReader`` reads a client's messages from a thread, noting when
each arrived. ``check_no_silent_gap`` then holds relay to its promise for that channel: every
update in order and once, seq +1 within a stream, a new stream only after a ``resync``, and a
missing update only if a ``resync`` reached the client after it was sent and before anything
newer did.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import websocket

from tests.support import Client


class NotifyWriter(threading.Thread):
    def __init__(self, url: str, channel: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.url, self.channel, self.interval = url, channel, interval
        self.began: dict[int, float] = {}  # n → wall time before its statement was sent
        self.committed: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                self.began[n] = time.time()
                conn.cursor().execute("SELECT relay_publish(%s, %s::json)",
                                      (self.channel, json.dumps({"n": n})))
                self.committed.add(n)
                time.sleep(self.interval)
        finally:
            conn.close()


class MessageReader(threading.Thread):
    """Reads (and answers the pings of) one client; ``client`` may be swapped for a new
    connection of the same logical client between ``pause()`` and ``resume()``."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.received: list[tuple[float, dict[str, Any]]] = [(time.time(), client.connected)]
        self.stop = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()

    def run(self) -> None:
        quiet_since = time.monotonic()
        while True:
            if self._paused.is_set():
                self._idle.set()
                time.sleep(0.01)
                continue
            try:
                message = self.client.recv(timeout=0.1)
            except websocket.WebSocketTimeoutException:
                if self.stop.is_set() and time.monotonic() - quiet_since > 1.0:
                    return
                continue
            if message is None:
                self._paused.set()  # closed: the test swaps in a new connection
                continue
            quiet_since = time.monotonic()
            self.received.append((time.time(), message))

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._idle.clear()
        self._paused.set()
        self._idle.wait(5)
        try:
            yield
        finally:
            self._paused.clear()

    def swap(self, client: Client) -> None:
        """Carry on with a new connection (call inside ``paused()``)."""
        self.client = client
        self.received.append((time.time(), client.connected))

    def cursors(self) -> dict[str, str]:
        """The client's resume position: the last cursor seen per channel."""
        cursors: dict[str, str] = {}
        for _, message in self.received:
            if message["type"] in ("connected", "resync"):
                for channel, cursor in (message.get("cursors") or {}).items():
                    if cursor and (message["type"] == "resync" or channel not in cursors):
                        cursors[channel] = cursor
            elif message["type"] == "update":
                cursors[message["channel"]] = message["cursor"]
        return cursors


@contextmanager
def running(*threads: NotifyWriter | MessageReader) -> Iterator[None]:
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop.set()
        for thread in threads:
            thread.join(20)


def stream_and_seq(cursor: str) -> tuple[str, int]:
    """A cursor's stream and seq: ``"<epoch>:<seq>:<tag>"`` (the database's durable history)
    or ``"<stream>:<seq>"`` (a listener's in-memory history)."""
    parts = cursor.split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1])
    stream, _, seq = cursor.rpartition(":")
    return stream, int(seq)


def check_no_silent_gap(received: list[tuple[float, dict[str, Any]]], channel: str,
                        writer: NotifyWriter) -> dict[str, int]:
    """Assert relay's promise for ``channel`` over what one client received; return counts."""
    start = received[0][0]  # the first `connected`: what was sent before is not owed
    delivered: list[int] = []
    stream, seq = "", 0
    resync_since_update: list[float] = []  # arrival times of resyncs since the last update
    excused: set[int] = set()
    resyncs = 0
    for arrived, message in received:
        kind = message["type"]
        if kind == "connected" and not stream:
            stream, seq = stream_and_seq(message["cursors"][channel])
        elif kind == "resync" and channel in message["channels"]:
            resyncs += 1
            resync_since_update.append(arrived)
            stream, seq = stream_and_seq(message["cursors"][channel])
        elif kind == "update" and message["channel"] == channel:
            n = message["data"]["n"]
            new_stream, new_seq = stream_and_seq(message["cursor"])
            assert new_stream == stream, f"update {n}: stream {new_stream} without a resync"
            assert new_seq == seq + 1, f"update {n}: seq {new_seq} after {seq}"
            seq = new_seq
            assert not delivered or n > delivered[-1], f"update {n} after {delivered[-1]}"
            skipped = range(delivered[-1] + 1 if delivered else 1, n)
            for gap in skipped:
                if writer.began[gap] < start:
                    continue
                # Missing: a resync must have come since, and after it was sent.
                assert any(at > writer.began[gap] for at in resync_since_update), \
                    f"update {gap} lost without a resync"
                excused.add(gap)
            delivered.append(n)
            resync_since_update = []
    for n in writer.committed - set(delivered) - excused:
        if writer.began[n] < start:
            continue
        assert n > (delivered[-1] if delivered else 0), f"update {n} lost"
        assert any(at > writer.began[n] for at in resync_since_update), \
            f"update {n} (after the last delivered) lost without a resync"
        excused.add(n)
    return {"delivered": len(delivered), "excused": len(excused), "resyncs": resyncs}
