"""Handshake abuse: every malformed or hostile upgrade gets a precise HTTP answer, and slow
handshakes are cut. Raw sockets, a real relay."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import RelayProcess, notify

KEY = base64.b64encode(os.urandom(16)).decode()


@pytest.fixture(scope="module")
def hs_relay(postgres_url: str, schema_installed: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("handshake"),
                         env={"RELAY_HANDSHAKE_TIMEOUT": "1"})
    relay.start()
    yield relay
    relay.stop()


def _request(relay: RelayProcess, raw: bytes) -> tuple[int, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and head[0] else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in head[1:])}
    return status, headers


def _upgrade(path: str = "/ws", method: str = "GET", version: str = "HTTP/1.1",
             **headers: str) -> bytes:
    base = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in base.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(("name", "raw", "status"), [
    ("valid upgrade", _upgrade(), 101),
    ("missing key", _upgrade(Sec_WebSocket_Key=""), 400),
    ("key not base64", _upgrade(Sec_WebSocket_Key="not base64!!"), 400),
    ("key of 15 bytes", _upgrade(Sec_WebSocket_Key=base64.b64encode(b"x" * 15).decode()), 400),
    ("version 8", _upgrade(Sec_WebSocket_Version="8"), 426),
    ("no version", _upgrade(Sec_WebSocket_Version=""), 426),
    ("POST upgrade", _upgrade(method="POST"), 405),
    ("HTTP/1.0", _upgrade(version="HTTP/1.0"), 400),
    ("Connection without Upgrade", _upgrade(Connection="keep-alive"), 400),
    ("Origin null", _upgrade(Origin="null"), 403),
    ("look-alike origin", _upgrade(Origin="https://app.example.com.evil.com"), 403),
    ("other scheme", _upgrade(Origin="http://app.example.com"), 403),
    ("other port", _upgrade(Origin="https://app.example.com:8443"), 403),
    ("allowed origin", _upgrade(Origin="https://app.example.com"), 101),
    ("allowed origin, other case", _upgrade(Origin="HTTPS://APP.EXAMPLE.COM"), 101),
    ("other path", _upgrade(path="/other"), 404),
    ("oversized header", _upgrade(X_Filler="a" * 70000), 400),
])
def test_handshake_answer(hs_relay: RelayProcess, name: str, raw: bytes, status: int) -> None:
    got, headers = _request(hs_relay, raw)
    assert got == status, name
    if status == 426:
        assert headers["sec-websocket-version"] == "13"


def test_slowloris_handshake_is_cut(hs_relay: RelayProcess, postgres_url: str) -> None:
    bystander = hs_relay.connect("slow-bystander")
    sock = socket.create_connection(("127.0.0.1", hs_relay.port), timeout=10)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    try:
        for _ in range(20):  # one header line every 0.3 s: never finishes
            time.sleep(0.3)
            sock.sendall(b"X-Slow: 1\r\n")
    except OSError:
        closed = True
    if not closed:
        sock.settimeout(5)
        try:
            closed = sock.recv(4096) is not None
        except OSError:
            closed = True
    assert closed, "the server should have cut the trickled handshake"
    assert time.monotonic() - started < 10
    notify(postgres_url, "user_Usage_slow-bystander", "{}")
    assert bystander.expect("update")["channel"] == "user_Usage_slow-bystander"
    bystander.close()
    sock.close()


def test_plain_get_on_ws_is_refused_without_upgrade(hs_relay: RelayProcess) -> None:
    status, _ = _request(hs_relay, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (400, 426)
