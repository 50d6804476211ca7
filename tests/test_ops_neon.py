"""Neon and poolers (trap 9): a DATABASE_URL that cannot LISTEN is refused or reported, never
silently accepted.

* A ``-pooler`` host is refused before anything starts: gunicorn exits non-zero with one line.
* Any other endpoint that accepts LISTEN but never delivers (a transaction-mode pooler under
  another name) fails the listener's self-check on every connect: it logs the clear error
  and /health stays 503, instead of looking healthy while delivering nothing. The test puts
  a proxy in front of PostgreSQL that forwards everything except notifications.

Neon suspending the compute terminates the listener's backend; reconnect → re-LISTEN →
resync is tested by tests/test_reliability_database.py::test_terminated_backend.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from tests.support import ROOT, SECRET, RelayProcess, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes


def test_gunicorn_refuses_a_pooler_url_with_one_line() -> None:
    env = {"PATH": os.environ["PATH"], "WEBSOCKET_JWT_SECRET": SECRET,
           "DATABASE_URL": "postgresql://app:s3cr3t-pw@ep-cool-darkness-123456-pooler.us-east-2"
                           ".aws.neon.tech/neondb?sslmode=require"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                             "wsgi:app"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay: configuration error: DATABASE_URL:")
    assert "-pooler" in lines[0] and "direct endpoint" in lines[0]
    assert "s3cr3t-pw" not in result.stderr + result.stdout  # the password is not echoed


class NotificationDroppingProxy:
    """TCP proxy to PostgreSQL that drops every NotificationResponse ('A') message."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.dropped = 0
        self._sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._filter, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _forward(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _filter(self, source: socket.socket, target: socket.socket) -> None:
        # With sslmode and gssencmode disabled every server message is: type, int32 length.
        buffer = b""
        try:
            while data := source.recv(65536):
                buffer += data
                out = []
                while len(buffer) >= 5:
                    end = 1 + int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < end:
                        break
                    message, buffer = buffer[:end], buffer[end:]
                    if message[:1] == b"A":
                        self.dropped += 1
                    else:
                        out.append(message)
                if out:
                    target.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            self._forward(source, target)  # closes both

    def close(self) -> None:
        for s in self._sockets:
            s.close()


@pytest.fixture
def deaf_database(postgres_url: str) -> Iterator[tuple[str, NotificationDroppingProxy]]:
    params = parse_dsn(postgres_url)
    host = params.get("host", "")
    if not host or host.startswith("/") or params.get("sslmode") in (
            "require", "verify-ca", "verify-full"):
        pytest.skip("the proxy needs PostgreSQL over plain TCP")
    proxy = NotificationDroppingProxy(host, int(params.get("port", 5432)))
    try:
        yield make_dsn(postgres_url, host="127.0.0.1", port=proxy.port, sslmode="disable",
                       gssencmode="disable"), proxy
    finally:
        proxy.close()


def test_a_database_url_whose_listen_never_delivers_is_reported_and_unhealthy(
        relay_factory: Callable[..., RelayProcess],
        deaf_database: tuple[str, NotificationDroppingProxy]) -> None:
    url, proxy = deaf_database
    relay = relay_factory({"DATABASE_URL": url, "RELAY_DB_CHECK_TIMEOUT": "1",
                           "RELAY_RECONNECT_MAX_DELAY": "1"}, wait=False)
    wait_for(lambda: "LISTEN does not deliver notifications" in relay.logs(), 20, 0.2,
             "the listener's self-check to fail")
    line = next(line for line in relay.logs().splitlines()
                if "LISTEN does not deliver notifications" in line)
    assert "direct endpoint" in line and '"level": "error"' in line
    assert proxy.dropped >= 1  # the self-check's own notification was sent, and lost
    status, body = wait_for(lambda: (answer := relay.health())[0] == 503 and answer, 10,
                            message="/health to report the failed self-check")
    assert status == 503
    assert body["reason"] == "database disconnected"
    assert body["listener"]["database"] == "disconnected"
    # It keeps trying (a pooler may be swapped for the direct endpoint by a redeploy only,
    # but a transient failure must not need one): a second attempt fails the same way.
    wait_for(lambda: relay.logs().count("LISTEN does not deliver notifications") >= 2, 20, 0.2,
             "a second self-check")
