"""relay's app wrapped in a WSGI middleware: WebSockets are served through Flask's ``/ws``
route, holding their greenlet (the socket is not the connection's to keep), and behave the
same: updates, pings, the close handshake and the drain on SIGTERM."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.wire import frame
from tests.support import RelayProcess, notify, raw_connected, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


@pytest.fixture
def wrapped(postgres_url: str, schema_installed: list[str], tmp_path: Path
            ) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path, workers=1, app="tests.wrapped_wsgi:app")
    relay.start()
    yield relay
    relay.shut_down()


def test_a_wrapped_app_serves_websockets(wrapped: RelayProcess, postgres_url: str) -> None:
    client = raw_connected(wrapped, "wrapped-1")
    notify(postgres_url, "user_Usage_wrapped-1", '{"n": 1}')
    assert json.loads(client.read_until(TEXT) or b"{}")["data"] == {"n": 1}
    client.send(frame(PING, b"hi"))
    assert client.read_until(PONG) == b"hi"
    client.send(frame(CLOSE, struct.pack("!H", 1000)))
    assert client.close_code() == 1000
    client.close()
    wait_for(lambda: "closed user=wrapped-1" in wrapped.logs(), 10,
             message="the close to be logged")
    assert wrapped.health()[1]["totalConnections"] == 0
    assert "Traceback" not in wrapped.logs()


def test_a_wrapped_app_drains_on_sigterm(wrapped: RelayProcess) -> None:
    clients = [raw_connected(wrapped, f"wrapped-drain-{n}") for n in range(3)]
    wrapped.stop()
    assert [client.close_code() for client in clients] == [1012, 1012, 1012]
