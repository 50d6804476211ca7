"""A HUP reload, as docs/operations.md describes it: the workers are replaced and their clients
closed with 1012, but the listener (and its history) stays, so a client that reconnects
resumes exactly, receiving what was committed while it was away, with no resync."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.support import RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


def test_hup_closes_clients_with_1012_and_they_resume_without_loss(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    channel = "user_Usage_hup-user"
    client = relay.connect("hup-user")
    epoch = client.connected["epoch"]
    notify(postgres_url, channel, '{"n": 1}')
    cursor = client.expect("update")["cursor"]
    listeners = relay.listener_pids()
    old_workers = set(relay.worker_pids())

    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    assert client.expect_close(timeout=20)[0] == 1012
    notify(postgres_url, channel, '{"n": 2}')  # committed while the client is away
    wait_for(lambda: set(relay.worker_pids()).isdisjoint(old_workers)
             and len(relay.worker_pids()) == 2, 30, 0.1, "new workers after HUP")
    relay.wait_healthy()

    back = relay.connect("hup-user", resume={channel: cursor})
    assert back.connected["epoch"] == epoch and back.connected["resumed"] is True
    assert back.expect("update")["data"] == {"n": 2}
    notify(postgres_url, channel, '{"n": 3}')
    assert back.expect("update")["data"] == {"n": 3}
    assert relay.listener_pids() == listeners
    back.close()
