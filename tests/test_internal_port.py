"""RELAY_INTERNAL_PORT: /health and /metrics on a second port of the same workers, whose
accept queue and pool a reconnect storm on the main port cannot fill (issue 12, the storm).

Config validation is unit-tested; the rest runs real gunicorn with two workers, real sockets
on loopback, and a bounded horde (a few dozen idle sockets) that holds the main port's pool.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from relay.config import ConfigError, Settings
from tests.support import SECRET, RelayProcess, free_port, notify, recv_until, wait_for
from tests.test_hostile_handshake import _upgrade

BASE = {"DATABASE_URL": "postgresql://u@db.example.com/app", "WEBSOCKET_JWT_SECRET": SECRET}


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw_status(port: int, request: bytes) -> int:
    """The status code of the first response line to ``request`` sent as is."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        head = recv_until(sock, b"\r\n")
    return int(head.split(b" ", 2)[1])


# ----- configuration -----

def test_no_internal_port_unless_set() -> None:
    settings = Settings.from_env(BASE)
    assert settings.internal_port == 0
    assert settings.bind_addresses == ["0.0.0.0:3000"]
    assert Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": "0"}).bind_addresses == \
        ["0.0.0.0:3000"]


def test_internal_port_is_bound_beside_the_main_port() -> None:
    settings = Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": "9091", "PORT": "8080"})
    assert settings.bind_addresses == ["0.0.0.0:8080", "0.0.0.0:9091"]
    v6 = Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": "9091", "RELAY_HOST": "::"})
    assert v6.bind_addresses == ["[::]:3000", "[::]:9091"]


@pytest.mark.parametrize("raw", ["health", "70000", "-1", "9091.5"])
def test_a_bad_internal_port_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="^RELAY_INTERNAL_PORT: "):
        Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": raw})


def test_the_internal_port_must_differ_from_port() -> None:
    with pytest.raises(ConfigError, match=r"RELAY_INTERNAL_PORT: must differ from PORT \(3000\)"):
        Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": "3000"})
    with pytest.raises(ConfigError, match=r"must differ from PORT \(8080\)"):
        Settings.from_env({**BASE, "RELAY_INTERNAL_PORT": "8080", "PORT": "8080"})


# ----- a real relay -----

@pytest.fixture(scope="module")
def relay_two_ports(postgres_url: str, schema_installed: list[str],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    # A pool of 2 handshakes per worker and a long handshake timeout: a horde of idle sockets
    # holds every slot of the main port for the whole test, and then waits in its queue.
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("internal"), env={
        "RELAY_INTERNAL_PORT": str(free_port()), "RELAY_HANDSHAKE_CONCURRENCY": "2",
        "RELAY_HANDSHAKE_TIMEOUT": "60", "RELAY_MAX_PENDING_PER_ADDRESS": "0"})
    relay.start()
    yield relay
    relay.shut_down()


def internal(relay: RelayProcess) -> int:
    return int(relay.env["RELAY_INTERNAL_PORT"])


@pytest.mark.slow
def test_internal_port_answers_health_and_metrics(relay_two_ports: RelayProcess) -> None:
    port = internal(relay_two_ports)
    client = relay_two_ports.connect("internal-1")  # the main port serves WebSockets as ever
    try:
        def counted() -> dict | None:
            status, body = get(port, "/health")
            health = json.loads(body)
            return health if status == 200 and health["totalConnections"] >= 1 else None
        health = wait_for(counted, 10, message="the internal /health to count the client")
        assert health["status"] == "healthy" and health["connectedUsers"] >= 1
        assert health["listener"]["workers"] == 2
        status, body = get(port, "/metrics")
        assert status == 200 and b"relay_connections" in body
        # The main port's /health is unchanged.
        assert get(relay_two_ports.port, "/health")[0] == 200
        notify(relay_two_ports.env["DATABASE_URL"], "user_Usage_internal-1", '{"x": 1}')
        assert client.expect("update")["data"] == {"x": 1}
    finally:
        client.close()


@pytest.mark.slow
def test_internal_port_serves_nothing_else(relay_two_ports: RelayProcess) -> None:
    port = internal(relay_two_ports)
    assert raw_status(port, _upgrade()) == 404  # no WebSocket on the internal port
    assert get(port, "/ws")[0] == 404
    assert get(port, "/")[0] == 404
    assert get(port, "/demo")[0] == 404
    assert raw_status(relay_two_ports.port, _upgrade()) == 101  # the main port upgrades


@pytest.mark.slow
def test_internal_port_answers_while_the_main_port_is_flooded(
        relay_two_ports: RelayProcess) -> None:
    relay = relay_two_ports
    port = internal(relay)
    # 2 workers x a pool of 2: 4 idle sockets hold every slot; the rest wait in the main
    # port's accept queue, behind which a health check on the main port waits too.
    horde = [socket.create_connection(("127.0.0.1", relay.port), timeout=5)
             for _ in range(40)]
    try:
        def held() -> bool:
            try:
                get(relay.port, "/health", timeout=1.0)
            except OSError:  # timed out: nobody accepts on the main port
                return True
            return False
        wait_for(held, 15, 0.1, "the horde to hold the main port")
        for _ in range(5):
            status, body = get(port, "/health", timeout=3.0)
            assert status == 200 and json.loads(body)["status"] == "healthy"
            assert get(port, "/metrics", timeout=3.0)[0] == 200
        with pytest.raises(OSError):  # still flooded: the answers above came from elsewhere
            get(relay.port, "/health", timeout=1.0)
    finally:
        for sock in horde:
            sock.close()
    wait_for(lambda: get(relay.port, "/health")[0] == 200, 30, 0.2,
             "the main port to answer once the horde is gone")
