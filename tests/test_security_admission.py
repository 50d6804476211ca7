"""One address cannot lock everybody out, and nobody can demand replays many times a second
(issue 14, item 4).

Real relays, real sockets, loopback only and bounded: 127.0.0.x source addresses stand for
different clients. The unit tests pin the accounting (``relay.worker.admission``).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.config import ConfigError, Settings
from relay.worker.admission import Admission, PendingTicket, address_key
from tests.support import CLIENT, NODE, ROOT, SECRET, RelayProcess, needs_node, recv_until, wait_for
from tests.test_hostile_handshake import _upgrade

BASE = {"DATABASE_URL": "postgresql://u@db.example.com/app", "WEBSOCKET_JWT_SECRET": SECRET}


# ----- the accounting -----

def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("203.0.113.7") == "203.0.113.7"


def test_pending_places_per_address_and_in_all() -> None:
    admission = Admission(Settings.from_env({**BASE, "RELAY_MAX_PENDING_PER_ADDRESS": "2",
                                             "RELAY_MAX_PENDING_CONNECTIONS": "3"}))
    a1, a2 = admission.admit("10.0.0.1"), admission.admit("10.0.0.1")
    assert isinstance(a1, PendingTicket) and isinstance(a2, PendingTicket)
    assert admission.admit("10.0.0.1") is None  # that address's share is taken
    b1 = admission.admit("10.0.0.2")
    assert isinstance(b1, PendingTicket) and admission.pending == 3
    # The worker's budget is full: the newcomer takes the oldest place.
    c1 = admission.admit("10.0.0.3")
    assert isinstance(c1, PendingTicket) and admission.evicted == 1
    assert admission.pending == 3 and admission.pending_from("10.0.0.1") == 1
    a1.release()  # the evicted connection ends: its place was given back already
    assert admission.pending == 3
    c1.release()
    c1.release()  # twice is harmless
    assert admission.pending == 2 and admission.pending_from("10.0.0.3") == 0


def test_defaults_keep_room_for_authenticated_users() -> None:
    settings = Settings.from_env(BASE)
    limit = settings.worker_connection_limit
    assert settings.pending_connection_limit == limit // 10 < limit
    assert settings.pending_per_address_limit == 128
    small = Settings.from_env({**BASE, "RELAY_WORKER_CONNECTIONS": "20"})  # limit 10
    assert small.pending_connection_limit == 9 and small.pending_per_address_limit == 8
    with pytest.raises(ConfigError, match="RELAY_MAX_PENDING_CONNECTIONS: must be below"):
        Settings.from_env({**BASE, "RELAY_MAX_CONNECTIONS_PER_WORKER": "50",
                           "RELAY_MAX_PENDING_CONNECTIONS": "50"})


def test_resumes_per_user_are_a_token_bucket() -> None:
    admission = Admission(Settings.from_env({**BASE, "RELAY_RESUME_RATE": "0.5",
                                             "RELAY_RESUME_BURST": "3"}))
    assert [admission.resume_wait("u", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert admission.resume_wait("u", 100.0) == pytest.approx(2.0)
    assert admission.resume_wait("other", 100.0) == 0.0  # per user
    assert admission.resume_wait("u", 101.0) == pytest.approx(1.0)
    assert admission.resume_wait("u", 102.0) == 0.0
    assert admission.resume_wait("u", 102.0) > 0


# ----- against a real relay -----

def _open(relay: RelayProcess, source: str, fly_client_ip: str | None = None
          ) -> tuple[int, Any]:
    """A WebSocket handshake from ``source`` that never authenticates: (status, socket)."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10,
                                    source_address=(source, 0))
    extra = {"Fly_Client_IP": fly_client_ip} if fly_client_ip else {}
    sock.sendall(_upgrade(**extra))
    head = recv_until(sock, b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, (sock, head)


@pytest.fixture
def sockets() -> Iterator[list[Any]]:
    held: list[Any] = []
    yield held
    for sock, _ in held:
        sock.close()


@pytest.mark.slow
def test_one_address_gets_its_share_and_others_still_log_in(
        relay_factory: Callable[..., RelayProcess], sockets: list[Any]) -> None:
    relay = relay_factory({"RELAY_MAX_PENDING_PER_ADDRESS": "5", "RELAY_AUTH_TIMEOUT": "30"})
    answers = []
    for n in range(12):  # two workers: at most 5 each
        # Off Fly.io anyone can send Fly-Client-IP: it changes nothing.
        status, held = _open(relay, "127.0.0.2", fly_client_ip=f"198.51.100.{n}")
        answers.append(status)
        sockets.append(held)
    assert answers.count(101) <= 10 and answers.count(429) == 12 - answers.count(101)
    refused = next(head for status, (_, head) in zip(answers, sockets, strict=True)
                   if status == 429)
    assert b"\r\nRetry-After: 1\r\n" in refused and b"from your address" in refused
    # Another address (127.0.0.1) logs in while the horde holds its places; /health answers.
    assert relay.health()[0] == 200
    for user in ("door-a", "door-b"):
        relay.connect(user).close()
    # The horde gone, its address is as new: nothing leaked.
    for sock, _ in sockets:
        sock.close()
    sockets.clear()
    wait_for(lambda: relay.health()[1].get("totalConnections") == 0, 15)
    assert "peer=127.0.0.2" in relay.logs() and "198.51.100." not in relay.logs()
    for _ in range(5):
        status, held = _open(relay, "127.0.0.2")
        sockets.append(held)
        assert status == 101


@pytest.mark.slow
def test_on_fly_the_client_is_the_one_flys_proxy_names(
        relay_factory: Callable[..., RelayProcess], sockets: list[Any]) -> None:
    relay = relay_factory({"FLY_APP_NAME": "relay-test", "RELAY_MAX_PENDING_PER_ADDRESS": "2",
                           "RELAY_AUTH_TIMEOUT": "30"})
    answers = []
    for _ in range(5):  # one peer (the proxy), one client: two workers, at most 2 each
        status, held = _open(relay, "127.0.0.1", fly_client_ip="203.0.113.5")
        answers.append(status)
        sockets.append(held)
    assert answers.count(101) <= 4 and 429 in answers
    # Another client behind the same proxy is not that one.
    status, held = _open(relay, "127.0.0.1", fly_client_ip="203.0.113.6")
    sockets.append(held)
    assert status == 101
    assert relay.health()[0] == 200  # /health is not counted behind the proxy


@pytest.mark.slow
def test_unauthenticated_sockets_cannot_fill_the_worker(
        relay_factory: Callable[..., RelayProcess], sockets: list[Any]) -> None:
    # One worker of 12 WebSockets, 4 of them for connections still unauthenticated. Without
    # that budget the 12 sockets below, from 12 addresses, took every slot and the users
    # after them were refused (1013).
    relay = relay_factory({"RELAY_MAX_CONNECTIONS_PER_WORKER": "12",
                           "RELAY_MAX_PENDING_CONNECTIONS": "4",
                           "RELAY_AUTH_TIMEOUT": "30"}, workers=1)
    for n in range(12):
        status, held = _open(relay, f"127.0.0.{10 + n}")
        assert status == 101
        sockets.append(held)
    # Each newcomer past the budget took the place of the oldest: those are closed 4010.
    evicted = [_close_of(sock) for sock, _ in sockets[:8]]
    assert evicted == [(4010, "too many unauthenticated connections: authenticate at once")] * 8
    # The authenticated users get in (each evicting a horde socket in passing), and stay.
    users = [relay.connect(f"room{n}") for n in range(8)]
    assert [u.connected["userId"] for u in users] == [f"room{n}" for n in range(8)]
    assert relay.health()[1]["totalConnections"] <= 12
    for user in users:
        user.round_trip()
        user.close()


def _close_of(sock: Any) -> tuple[int, str]:
    """The close frame a server sent on a raw WebSocket that sent nothing."""
    sock.settimeout(10)
    data = b""
    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[0] == 0x88, data[:20]
    payload = data[2:2 + (data[1] & 0x7F)]
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


@pytest.mark.slow
def test_resuming_too_often_is_told_when_to_come_back(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_RESUME_BURST": "2", "RELAY_RESUME_RATE": "0.5"}, workers=1)
    first = relay.connect("replayer")
    cursors = first.connected["cursors"]
    first.close()
    for _ in range(2):
        relay.connect("replayer", resume=cursors).close()
    throttled = relay.connect("replayer", resume=cursors, expect_connected=False)
    assert throttled.expect_close() == (1013, "resuming too often: retry in 2s")
    relay.connect("replayer").close()  # a fresh connection asks for no replay: admitted
    relay.connect("someone-else", resume={}).close()
    time.sleep(2.1)  # the subject here is time: the bucket refills at 0.5 per second
    relay.connect("replayer", resume=cursors).close()


@pytest.mark.slow
@needs_node
def test_the_bundled_client_backs_off_and_gets_back_in(
        relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_RESUME_BURST": "1", "RELAY_RESUME_RATE": "0.5"}, workers=1)
    first = relay.connect("js-resumer")
    cursors = first.connected["cursors"]
    first.close()
    relay.connect("js-resumer", resume=cursors).close()  # the one resume of the burst
    assert NODE is not None
    proc = subprocess.Popen(
        [NODE, str(ROOT / "tests" / "resume_backoff_client.mjs")], cwd=CLIENT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "URL": relay.ws_url, "TOKEN": relay.token("js-resumer"),
             "CURSORS": json.dumps(cursors)})
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    seen = []
    try:
        while True:
            event = events.get(timeout=15)
            seen.append(event)
            if event.get("state") == "connected":
                break
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    refusals = [e for e in seen if e.get("state") == "reconnecting" and e.get("code") == 1013]
    delays = [e["ms"] for e in seen if e["event"] == "timer" and e["ms"] <= 2000]
    # Refused while the bucket refills (2 s), each time with the reason, and never in a
    # loop: each wait is longer than the one before (the backoff is not reset by a refusal).
    assert 1 <= len(refusals) <= 4, seen
    assert all(e["reason"].startswith("resuming too often: retry in") for e in refusals)
    assert delays[:len(refusals)] == sorted(set(delays[:len(refusals)])), delays
    assert seen[-1]["reason"] == "resumed"
