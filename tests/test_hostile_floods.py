"""Floods, bounded in count and time, loopback only: never-authenticating hordes, half-open
handshakes, connect churn and one user over the cap, message, ping and fragment spam. Every
flood: the right close code on every connection (with a clean closing handshake), bounded
worker memory, /health answering throughout, and a bystander still served.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest

from tests.conformance.wire import RawClient, frame
from tests.support import RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

CLOSE, PING, CONT, TEXT = 0x8, 0x9, 0x0, 0x1
MB = 2**20
USER_CAP = 20


@pytest.fixture(scope="module")
def flood_relay(postgres_url: str, schema_installed: list[str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    # Every flood here comes from 127.0.0.1, as if from that many addresses: the door that
    # turns one address's horde away (RELAY_MAX_PENDING_PER_ADDRESS) is off, so that these
    # test the defences behind it; tests/test_security_admission.py tests the door.
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("floods"), env={
        "RELAY_AUTH_TIMEOUT": "1", "RELAY_HANDSHAKE_TIMEOUT": "1",
        "RELAY_CLIENT_MSG_RATE": "20", "RELAY_MAX_CONNECTIONS_PER_USER": str(USER_CAP),
        "RELAY_MAX_PENDING_PER_ADDRESS": "0", "RELAY_MAX_PENDING_CONNECTIONS": "5000"})
    relay.start()
    yield relay
    relay.shut_down()


@pytest.fixture
def bystander(flood_relay: RelayProcess, postgres_url: str) -> Iterator[None]:
    """Connected before the flood; must receive an update after it."""
    client = flood_relay.connect("flood-bystander")
    yield
    notify(postgres_url, "user_Usage_flood-bystander", '{"after": "flood"}')
    assert client.expect("update")["data"] == {"after": "flood"}
    client.close()


class HealthWatch:
    """Polls /health every 0.1 s from a thread while a flood runs."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:  # a generous timeout: a busy machine is slow, not broken
                with urllib.request.urlopen(self.relay.http_url + "/health", timeout=15) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.answers.append((status, time.monotonic() - started))
            self._stop.wait(0.1)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        statuses = Counter(status for status, _ in self.answers)
        assert statuses and set(statuses) == {200}, f"/health answered {dict(statuses)}"
        slowest = max(seconds for _, seconds in self.answers)
        assert slowest < 10, f"/health took {slowest:.1f} s during the flood"


def _rss(relay: RelayProcess) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in relay.worker_pids())


def _close_cleanly(client: RawClient, timeout: float = 10.0) -> int | None:
    """The server's close code; then our echo, and the server must end the TCP stream."""
    code = client.close_code(timeout)
    if code is not None:
        _echo_close(client, code, timeout)
    return code


def _echo_close(client: RawClient, code: int, timeout: float = 10.0) -> None:
    try:
        client.send(frame(CLOSE, struct.pack("!H", code)))
        client.sock.settimeout(timeout)
        while client.sock.recv(4096):
            pass
    except OSError:
        pass  # reset after the close frames crossed: still a complete closing handshake
    finally:
        client.close()


def _wait_idle(relay: RelayProcess, connections: int = 1) -> None:
    wait_for(lambda: relay.health()[1].get("totalConnections") == connections, 20,
             message=f"only {connections} connection(s) left")


def test_never_authenticating_horde_is_closed_4010(flood_relay: RelayProcess,
                                                   bystander: None) -> None:
    before = _rss(flood_relay)
    with HealthWatch(flood_relay):
        horde = [RawClient(flood_relay.port, "/ws") for _ in range(1000)]
        peak = _rss(flood_relay)
        codes = Counter(_close_cleanly(client) for client in horde)
    assert codes == {4010: 1000}
    _wait_idle(flood_relay)
    assert peak - before < 150 * MB, f"{(peak - before) / MB:.0f} MB for 1000 connections"
    assert _rss(flood_relay) - before < 64 * MB


def test_half_open_handshake_horde_is_cut(flood_relay: RelayProcess, bystander: None) -> None:
    with HealthWatch(flood_relay):
        socks = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", flood_relay.port), timeout=10)
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            socks.append(sock)
        started = time.monotonic()
        for sock in socks:
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:40]
            assert sock.recv(4096) == b""  # and closed
            sock.close()
        assert time.monotonic() - started < 10
    _wait_idle(flood_relay)


def test_connect_churn_of_one_user(flood_relay: RelayProcess, postgres_url: str,
                                   bystander: None) -> None:
    with HealthWatch(flood_relay):
        deadline = time.monotonic() + 10
        rounds = 0
        while rounds < 150 and time.monotonic() < deadline:
            flood_relay.connect("churner").close()
            rounds += 1
        _wait_idle(flood_relay)
    assert flood_relay.health()[1]["connectedUsers"] == 1
    back = flood_relay.connect("churner")
    notify(postgres_url, "user_Usage_churner", '{"still": 1}')
    assert back.expect("update")["data"] == {"still": 1}
    back.close()


def test_one_user_over_the_cap_gets_4008_and_the_rest_are_served(
        flood_relay: RelayProcess, postgres_url: str, bystander: None) -> None:
    token = flood_relay.token("capped")
    with HealthWatch(flood_relay):
        clients = [RawClient(flood_relay.port, f"/ws?token={token}")
                   for _ in range(USER_CAP + 10)]
        served, refused = [], []
        for client in clients:  # the first frame: "connected", or the close
            opcode, payload = client.read_frame()
            if opcode == TEXT and json.loads(payload)["type"] == "connected":
                served.append(client)
            else:
                refused.append((opcode, payload[:2]))
                _echo_close(client, 4008)
        assert len(served) == USER_CAP
        assert refused == [(CLOSE, struct.pack("!H", 4008))] * 10
        notify(postgres_url, "user_Usage_capped", '{"n": 1}')
        for client in served:
            assert json.loads(client.read_until(TEXT) or b"{}")["data"] == {"n": 1}
            client.send(frame(CLOSE, struct.pack("!H", 1000)))
            assert client.close_code() == 1000
            client.close()
    _wait_idle(flood_relay)


SPAM = {
    "text messages": frame(TEXT, b'{"type":"pong"}'),
    "pings": frame(PING, b"x"),
    "empty fragments": frame(CONT, b"", fin=False),
}


@pytest.mark.parametrize("kind", list(SPAM))
def test_spam_is_closed_1008_at_the_rate_limit(flood_relay: RelayProcess, bystander: None,
                                              kind: str) -> None:
    before = _rss(flood_relay)
    with HealthWatch(flood_relay):
        client = RawClient(flood_relay.port, f"/ws?token={flood_relay.token('spammer')}")
        assert json.loads(client.read_until(TEXT) or b"{}")["type"] == "connected"
        if kind == "empty fragments":
            client.send(frame(TEXT, b'{"type"', fin=False))
        burst = SPAM[kind] * 1000
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:  # as fast as the socket takes them
                client.send(burst)
        except OSError:
            pass  # closed by the server, as it should be
        payload = client.read_until(CLOSE)
        client.close()
    assert payload is not None and payload[:2] == struct.pack("!H", 1008), payload
    assert payload[2:] == b"message rate limit"
    _wait_idle(flood_relay)
    assert _rss(flood_relay) - before < 32 * MB
