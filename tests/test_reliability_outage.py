"""The listener gone: killed -9 under a steady stream of updates (no silent gap for the
client), and away for a while (its supervisor frozen after the kill): the workers keep every
connection alive and bounded meanwhile — heartbeats go on, tokens still expire, /health says
503, a newcomer waits — and when a listener is back everyone is attached again and told to
resync (in-memory history: relay's outbox off for these tests; with it on they resume from
the outbox with no resync, tests/test_durable_listener.py and bench/soak.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.streams import MessageReader, NotifyWriter, check_no_silent_gap, running
from tests.support import RelayProcess, database_connections, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


@contextmanager
def _listener_away(relay: RelayProcess) -> Iterator[None]:
    (supervisor,) = relay.supervisor_pids()
    (listener,) = relay.listener_pids()
    os.kill(supervisor, signal.SIGSTOP)  # nobody restarts the listener…
    try:
        os.kill(listener, signal.SIGKILL)
        yield
    finally:
        os.kill(supervisor, signal.SIGCONT)  # …until now


def test_listener_away_connections_keep_heartbeat_and_token_limits_then_resync(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    relay = relay_factory({"RELAY_PING_INTERVAL": "0.5", "RELAY_PONG_TIMEOUT": "3",
                           "RELAY_TOKEN_REFRESH_WINDOW": "1"})
    # Read in the background, answering its pings, while the test waits on the others: a
    # client that does not answer for RELAY_PONG_TIMEOUT is (rightly) closed 4011.
    steady = MessageReader(relay.connect("away1"))
    short = relay.connect(token=relay.token("away2", ttl=5))
    old_epoch = relay.health()[1]["listener"]["epoch"]
    with running(steady):
        with _listener_away(relay):
            wait_for(lambda: relay.health()[0] == 503, 10, message="503 without a listener")
            assert relay.health()[1]["reason"] == "listener unreachable"
            newcomer = relay.connect("away3", expect_connected=False)
            # The connection is kept alive by its worker: pings go on, and it answers them.
            pings = steady.client.pings_answered
            wait_for(lambda: steady.client.pings_answered >= pings + 3, 3,
                     message="three pings while the listener is away")
            # A connection never outlives its token, listener or not.
            code, reason = short.expect_close(timeout=10)
            assert code == 4001 and "expired" in reason
        # A listener again: the newcomer is connected, the steady client told to resync.
        connected = newcomer.expect("connected", timeout=15)
        assert connected["userId"] == "away3"
        back = MessageReader(newcomer)
        with running(back):
            resync = wait_for(lambda: next((m for _, m in steady.received
                                            if m["type"] == "resync"), None), 15,
                              message="the steady client's resync")
            assert resync["reason"] == "listener restarted"
            # The newcomer waited: its `connected` carries the epoch of the listener that
            # came back, which did not exist while the listener was away.
            assert connected["epoch"] == relay.wait_healthy()["listener"]["epoch"] != old_epoch
            for user, reader in (("away1", steady), ("away3", back)):
                notify(postgres_url, f"user_Usage_{user}", '{"back": 1}')
                wait_for(lambda r=reader: any(m.get("data") == {"back": 1}
                                              for _, m in r.received), 10,
                         message=f"{user}'s update")
    for client in (steady.client, newcomer):
        assert client.close_code is None
    assert len(relay.listener_pids()) == 1
    wait_for(lambda: database_connections(postgres_url) == 1, 10,
             message="one database connection")
    for client in (steady.client, newcomer):
        client.close()


def test_kill_9_listener_under_steady_writes_never_skips_silently(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, outbox_off: str) -> None:
    """While notifications flow: the old listener's stream without gaps, one resync ('listener
    restarted'), the new listener's stream without gaps; what is missing was sent before the
    client saw the resync; nothing twice; the client never disconnected."""
    channel = "user_Usage_kw1"
    relay = relay_factory()
    client = relay.connect("kw1")
    writer, reader = NotifyWriter(postgres_url, channel), MessageReader(client)
    with running(writer, reader):
        wait_for(lambda: len(writer.committed) >= 50, 10, message="the writer")
        (listener,) = relay.listener_pids()
        os.kill(listener, signal.SIGKILL)
        wait_for(lambda: any(m["type"] == "resync" for _, m in reader.received), 15,
                 message="the resync")
        sent_after = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= sent_after + 50, 10,
                 message="the writer after the resync")
    assert client.close_code is None
    counts = check_no_silent_gap(reader.received, channel, writer)
    assert counts["resyncs"] == 1 and counts["delivered"] >= 100
    (resync,) = [m for _, m in reader.received if m["type"] == "resync"]
    assert resync["reason"] == "listener restarted"
    client.close()
