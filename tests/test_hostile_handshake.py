"""Handshake abuse: every malformed or hostile upgrade gets a precise HTTP answer, slow
handshakes are cut after RELAY_HANDSHAKE_TIMEOUT, oversized headers are refused before they
are buffered, and no malformed request puts a token in a log. Raw sockets, a real relay."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

KEY = base64.b64encode(os.urandom(16)).decode()


@pytest.fixture(scope="module")
def hs_relay(postgres_url: str, schema_installed: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("handshake"),
                         env={"RELAY_HANDSHAKE_TIMEOUT": "1"})
    relay.start()
    yield relay
    relay.shut_down()


def _request(relay: RelayProcess, raw: bytes) -> tuple[int, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # refused before the whole request was sent: the answer is still there
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and head[0] else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in head[1:])}
    return status, headers


def _upgrade(path: str = "/ws", method: str = "GET", version: str = "HTTP/1.1",
             extra: bytes = b"", **headers: str) -> bytes:
    base = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in base.items() if v]
    return ("\r\n".join(lines) + "\r\n").encode() + extra + b"\r\n"


def _accept(key: str) -> str:
    guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    return base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()


def _many_headers(count: int, size: int) -> bytes:
    return b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * size) for i in range(count))


ORIGIN_OK = "https://app.example.com"  # RelayProcess's ALLOWED_ORIGINS
HANDSHAKES = [
    ("valid upgrade", _upgrade(), 101),
    ("missing key", _upgrade(Sec_WebSocket_Key=""), 400),
    ("key not base64", _upgrade(Sec_WebSocket_Key="not base64!!"), 400),
    ("key of 15 bytes", _upgrade(Sec_WebSocket_Key=base64.b64encode(b"x" * 15).decode()), 400),
    ("key of 17 bytes", _upgrade(Sec_WebSocket_Key=base64.b64encode(b"x" * 17).decode()), 400),
    ("two keys", _upgrade(extra=f"Sec-WebSocket-Key: {KEY}\r\n".encode()), 400),
    ("version 8", _upgrade(Sec_WebSocket_Version="8"), 426),
    ("version 14", _upgrade(Sec_WebSocket_Version="14"), 426),
    ("versions 13, 8", _upgrade(Sec_WebSocket_Version="13, 8"), 426),
    ("no version", _upgrade(Sec_WebSocket_Version=""), 426),
    ("POST upgrade", _upgrade(method="POST"), 405),
    ("PUT upgrade", _upgrade(method="PUT"), 405),
    ("HTTP/1.0", _upgrade(version="HTTP/1.0"), 400),
    ("HTTP/2.0", _upgrade(version="HTTP/2.0"), 400),
    ("HTTP/0.9 style request line", b"GET /ws\r\n\r\n", 400),
    ("Connection without Upgrade", _upgrade(Connection="keep-alive"), 400),
    ("no Host", _upgrade(Host=""), 400),
    ("empty Host", _upgrade(extra=b"Host: \r\n").replace(b"Host: 127.0.0.1\r\n", b""), 400),
    ("Origin null", _upgrade(Origin="null"), 403),
    ("look-alike origin", _upgrade(Origin="https://app.example.com.evil.com"), 403),
    ("origin with a trailing dot", _upgrade(Origin="https://app.example.com."), 403),
    ("origin with user info", _upgrade(Origin="https://app.example.com@evil.com"), 403),
    ("origin as a path", _upgrade(Origin="https://evil.com/https://app.example.com"), 403),
    ("origin suffix", _upgrade(Origin="https://evilapp.example.com"), 403),
    ("other scheme", _upgrade(Origin="http://app.example.com"), 403),
    ("other port", _upgrade(Origin="https://app.example.com:8443"), 403),
    ("file origin", _upgrade(Origin="file://"), 403),
    ("two origins, one allowed", _upgrade(Origin=ORIGIN_OK,
                                          extra=b"Origin: https://evil.com\r\n"), 403),
    ("allowed origin", _upgrade(Origin=ORIGIN_OK), 101),
    ("allowed origin, other case", _upgrade(Origin="HTTPS://APP.EXAMPLE.COM"), 101),
    ("other path", _upgrade(path="/other"), 404),
    ("request line over 8 KiB", _upgrade(path="/ws?token=" + "a" * 9000), 414),
    ("one header of 70 KB", _upgrade(X_Filler="a" * 70000), 431),
    ("header lines adding up to 6 MB", _upgrade(extra=_many_headers(90, 60000)), 431),
    ("header lines adding up to 40 KB", _upgrade(extra=_many_headers(10, 4000)), 431),
    ("150 header lines", _upgrade(extra=_many_headers(150, 1)), 431),
    ("100 header lines", _upgrade(extra=_many_headers(100, 1)), 431),
    ("50 small header lines", _upgrade(extra=_many_headers(50, 100)), 101),
    ("upgrade with a body", _upgrade(Content_Length="5", extra=b"") + b"hello", 413),
    ("POST /health with 1 GB announced", b"POST /health HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 1000000000\r\n\r\n", 413),
    ("chunked GET /health", b"GET /health HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413),
    ("GET /health", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
]


@pytest.mark.parametrize(("name", "raw", "status"), HANDSHAKES, ids=[h[0] for h in HANDSHAKES])
def test_handshake_answer(hs_relay: RelayProcess, name: str, raw: bytes, status: int) -> None:
    got, headers = _request(hs_relay, raw)
    assert got == status, name
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    if status == 101:
        assert headers["sec-websocket-accept"] == _accept(KEY)


def test_no_extension_or_subprotocol_is_agreed_to(hs_relay: RelayProcess) -> None:
    """permessage-deflate would allow RSV1 frames (relay refuses them, 1002): never offered."""
    status, headers = _request(hs_relay, _upgrade(
        Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits",
        Sec_WebSocket_Protocol="chat, superchat"))
    assert status == 101
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers


def test_malformed_request_lines_never_log_the_token(hs_relay: RelayProcess) -> None:
    secret = "eyJzZWNyZXQiOiJ0b2tlbiJ9.not-for-logs"
    for line in (f"GET /ws?token={secret} HTTP/1.1 extra", f"GET /ws?token={secret} HTTP/9.9",
                 f"GET /ws?token={secret}&x={'a' * 9000} HTTP/1.1",
                 f"BREW /ws?token={secret}"):
        status, _ = _request(hs_relay, f"{line}\r\nHost: x\r\n\r\n".encode())
        assert status in (400, 414), line
    _request(hs_relay, _upgrade(path=f"/ws?token={secret}", version="HTTP/1.0"))
    _request(hs_relay, _upgrade(path=f"/ws?token={secret}", extra=_many_headers(150, 1)))
    wait_for(lambda: "Invalid http version" in hs_relay.logs(), 5,
             message="gevent to log the malformed request line")
    logs = hs_relay.logs()
    assert "not-for-logs" not in logs and "eyJzZWNyZXQi" not in logs
    assert "Traceback" not in logs


def _seconds_until_closed(relay: RelayProcess, first: bytes, trickle: bytes,
                          bound: float = 10.0) -> float:
    """Send ``first``, then one byte of ``trickle`` (repeated) every 0.2 s: seconds until
    the server closes the connection (``bound`` when it never does)."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    started = time.monotonic()
    try:
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        i = 0
        while time.monotonic() - started < bound:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                return time.monotonic() - started
            if trickle:
                try:
                    sock.send(trickle[i % len(trickle):i % len(trickle) + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    return time.monotonic() - started
                i += 1
            time.sleep(0.2)
        return bound
    finally:
        sock.close()


@pytest.mark.parametrize(("first", "trickle"), [
    (b"", b""),  # connects and says nothing
    (b"GE", b"T /ws?token=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),  # the request line, slowly
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),  # headers, slowly
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b""),  # a kept-alive connection left idle
], ids=["silent", "request line trickled", "headers trickled", "idle keep-alive"])
def test_slow_handshake_is_cut_after_the_handshake_timeout(
        hs_relay: RelayProcess, postgres_url: str, first: bytes, trickle: bytes) -> None:
    bystander = hs_relay.connect("slow-bystander")
    elapsed = _seconds_until_closed(hs_relay, first, trickle)
    # RELAY_HANDSHAKE_TIMEOUT=1 here: closed after about 1 s (a kept-alive connection gets
    # it twice at most: once for the request, once waiting for the next one).
    assert 0.8 < elapsed < 5, f"closed after {elapsed:.1f} s"
    notify(postgres_url, "user_Usage_slow-bystander", "{}")
    assert bystander.expect("update")["channel"] == "user_Usage_slow-bystander"
    bystander.close()


def test_a_trickled_body_is_refused_at_once(hs_relay: RelayProcess) -> None:
    """gevent read a body to its announced end after answering, with no timeout: a gigabyte
    announced and sent a byte at a time held the connection for ever."""
    with socket.create_connection(("127.0.0.1", hs_relay.port), timeout=10) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\nx")
        answer = b""
        try:
            while chunk := sock.recv(4096):  # until the server closes: within the timeout
                answer += chunk
                sock.sendall(b"x")
        except OSError:
            pass  # reset: closed with our bytes unread
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_plain_get_on_ws_is_refused_without_upgrade(hs_relay: RelayProcess) -> None:
    status, _ = _request(hs_relay, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (400, 426)


@pytest.fixture(scope="module")
def fly_relay(postgres_url: str, schema_installed: list[str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay that runs on Fly.io as far as it knows (FLY_APP_NAME): behind Fly's proxy."""
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("fly"),
                         env={"FLY_APP_NAME": "relay-test"})
    relay.start()
    yield relay
    relay.shut_down()


@pytest.mark.parametrize(("on_fly", "claimed", "logged"), [
    (True, "203.0.113.7", "203.0.113.7"),  # what Fly's proxy sends
    (True, "2001:db8::1", "2001:db8::1"),
    (True, "203.0.113.7 <script>\x1b[31m forged=1", "127.0.0.1"),
    (True, "x" * 3000, "127.0.0.1"),
    (False, "203.0.113.7", "127.0.0.1"),  # elsewhere anyone can send the header
])
def test_fly_client_ip_is_logged_only_on_fly_and_when_it_is_an_address(
        request: pytest.FixtureRequest, on_fly: bool, claimed: str, logged: str) -> None:
    relay: RelayProcess = request.getfixturevalue("fly_relay" if on_fly else "hs_relay")
    user = f"fly-{on_fly:d}-{abs(hash(claimed)) % 10**6}"
    token = relay.token(user)
    raw = _upgrade(path=f"/ws?token={token}", Fly_Client_IP=claimed)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while b'"connected"' not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    line = wait_for(lambda: next((entry for entry in relay.logs().splitlines()
                                  if f"user {user} connected" in entry), None), 5)
    assert f"connected from {logged} " in line
