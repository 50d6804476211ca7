"""The JS client itself (client/src, not the demo page) in Node against a real relay, with
the `ws` package as its WebSocket: connect, receive an UPDATE, resync after the listener is
killed, and reconnect by itself when the relay is restarted on the same port (one resync for
that reconnect)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import CLIENT, NODE, SECRET, RelayProcess, execute, needs_node, wait_for

pytestmark = [pytest.mark.slow, needs_node]  # a relay and node


class NodeClient:
    def __init__(self, url: str, user_id: str) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen(
            [NODE, "test-support/node-client.mjs", "--url", url, "--user-id", user_id,
             "--secret", SECRET], cwd=CLIENT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []  # every event taken from the queue, in order
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        seen = []
        try:
            while True:
                event = self.events.get(timeout=timeout)
                seen.append(event)
                self.seen.append(event)
                if match(event):
                    return event
        except queue.Empty:
            raise AssertionError(f"no matching event within {timeout}s; saw {seen}") from None

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def state(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "state" and e["state"] == name


def plan(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "update" and name in json.dumps(e["data"])


@pytest.mark.timeout(120)
def test_node_client_against_the_real_relay(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory({"RELAY_DRAIN_SECONDS": "0"})
    client = NodeClient(relay.ws_url, "node-int")
    try:
        client.expect(state("connected"), 15)
        execute(postgres_url, "INSERT INTO subscription (user_id, plan, status) "
                              "VALUES ('node-int', 'free', 'active')")
        execute(postgres_url, "UPDATE subscription SET plan = 'node-pro' "
                              "WHERE user_id = 'node-int'")
        client.expect(plan("node-pro"), 2)

        # The listener killed: the connection is taken back from where it was (relay's
        # outbox is the history), no resync.
        (listener,) = relay.listener_pids()
        os.kill(listener, signal.SIGKILL)
        wait_for(lambda: relay.listener_pids() not in ([], [listener])
                 and relay.health()[0] == 200, 10)
        execute(postgres_url, "UPDATE subscription SET plan = 'node-after-kill' "
                              "WHERE user_id = 'node-int'")
        client.expect(plan("node-after-kill"), 5)

        relay.stop()
        client.expect(state("reconnecting"), 10)
        relay.start()
        client.expect(state("connected"), 30)
        execute(postgres_url, "UPDATE subscription SET plan = 'node-after-restart' "
                              "WHERE user_id = 'node-int'")
        client.expect(plan("node-after-restart"), 5)
        # The client resumed with its cursors on a relay that never saw them: they are the
        # database's, so nothing needed a resync — not the kill, not the restart.
        assert not [e for e in client.seen if e["event"] == "resync"], client.seen
    finally:
        client.close()
