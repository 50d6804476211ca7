"""Test helpers: a real relay (gunicorn + supervisor + listener) and a real WebSocket client.

``RelayProcess`` starts ``gunicorn -c gunicorn.conf.py wsgi:app`` exactly as production
does, on a free loopback port, with its own listener socket and log files. ``Client`` is a
thin wrapper over websocket-client that reads JSON messages, skips heartbeats on request
and reports the close code that really arrived on the wire.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
import websocket
from psycopg2 import sql

from relay.auth import issue_token
from relay.config import read_token_claims
from tests.conformance.wire import RawClient

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"  # the JS client, its tests and test support
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium")  # Debian's, driven by playwright-core; never downloaded
needs_node = pytest.mark.skipif(
    NODE is None or not (CLIENT / "node_modules").exists(),
    reason="node or client/node_modules missing (make test runs npm ci first)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Debian's chromium is not installed")
SECRET = "test-secret-" + "s" * 40


class BrowserScript:
    """A headless Chromium driven by one of the client's ``test-support/*.mjs`` scripts:
    one JSON command a line in, one JSON answer a line out (``{"ok": …, "value": …}``)."""

    def __init__(self, script: str) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen(
            [NODE, script], cwd=CLIENT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "CHROMIUM": CHROMIUM or ""})

    def step(self, **command: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer["ok"], answer
        return answer.get("value", answer)

    def close(self) -> None:
        try:
            self.step(step="close")
            self.proc.wait(20)
        except Exception:  # noqa: BLE001 - never leave a browser behind
            self.proc.kill()


def free_port() -> int:
    """A port below Linux's ephemeral range (32768+), so that the many outgoing client
    sockets of a concurrent test or benchmark cannot take it between now and gunicorn's
    bind; checked free on the wildcard address gunicorn binds."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    """What ``sock`` sends until ``marker`` has arrived or the peer closes."""
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class RelayProcess:
    def __init__(self, database_url: str, workdir: Path, workers: int = 2,
                 env: dict[str, str] | None = None, app: str = "wsgi:app") -> None:
        self.app = app  # gunicorn's APP_MODULE
        self.port = int((env or {}).get("PORT") or free_port())
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(workdir / "listener.sock")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "DATABASE_URL": database_url,
            "WEBSOCKET_JWT_SECRET": SECRET,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "ALLOWED_ORIGINS": "https://app.example.com",
            "RELAY_SOCKET_PATH": self.socket_path,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_DRAIN_SECONDS": "1",
            **(env or {}),
        }
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers = workers

    # ----- process control -----

    def start(self, wait: bool = True) -> RelayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app],
            cwd=ROOT, env=self.env,
            stdout=self.stdout_path.open("ab"), stderr=self.stderr_path.open("ab"),
        )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.logs()}")
            status, body = self.health()
            if status == 200 and body["listener"]["workers"] >= self.workers:
                return body
            return None
        return wait_for(ready, timeout, 0.1, "relay to become healthy")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        tree = self.tree()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for p in tree:  # never leave a listener behind, even when a test failed
            try:
                p.kill()
            except psutil.Error:
                pass
        return self.proc.returncode

    def shut_down(self) -> None:
        """A fixture's teardown: gunicorn's quick shutdown (SIGINT), whose ``on_exit`` still
        stops the supervisor and the listener and removes the socket. The graceful stop
        (SIGTERM: drain, close handshakes) is tested where it is the subject; as a teardown
        it cost a second or more per relay, over three with a client left open."""
        self.stop(signal.SIGINT)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def processes(self, marker: str) -> list[psutil.Process]:
        found = []
        for p in self.tree():
            try:
                if marker in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def listener_pids(self) -> list[int]:
        return [p.pid for p in self.processes("relay listen")]

    def supervisor_pids(self) -> list[int]:
        return [p.pid for p in self.processes("relay supervise")]

    def worker_pids(self) -> list[int]:
        master = self.proc.pid if self.proc else 0
        try:
            return [p.pid for p in psutil.Process(master).children()
                    if "relay" not in " ".join(p.cmdline()[1:3])]
        except psutil.NoSuchProcess:
            return []

    def logs(self) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    # ----- HTTP and WebSocket -----

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # A 429 (the address's pending budget is held by a connection still closing)
            # answers in plain text: the caller sees the status, and a poll polls again.
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"{}")
            except ValueError:
                return exc.code, {}
        except OSError:
            return 0, {}

    def fresh_health(self) -> tuple[int, dict[str, Any]]:
        """``/health`` from figures the listener built after this call began: workers serve
        what it pushes every second, so a plain ``health()`` may be up to a second old."""
        built = self.health()[1].get("listener", {}).get("statsBuilt", 0)

        def fresh() -> tuple[int, dict[str, Any]] | None:
            answer = self.health()
            return answer if answer[1].get("listener", {}).get("statsBuilt", 0) >= built + 2 \
                else None
        return wait_for(fresh, 10, message="figures the listener built after the call")

    def token(self, user_id: str | int, ttl: int = 3600) -> str:
        """A token this relay accepts: its secret, and its ``iss``/``aud`` if the test set
        them."""
        issuer, audience = read_token_claims(self.env)
        return issue_token(user_id, SECRET.encode(), ttl, issuer=issuer, audience=audience)

    def connect(self, user_id: str | int | None = None, token: str | None = None,
                via: str = "message", resume: dict[str, str] | None = None,
                expect_connected: bool = True, authenticate: bool = True,
                **options: Any) -> Client:
        if not authenticate:
            token = None
        elif token is None:
            token = self.token(user_id if user_id is not None else 1)
        client = Client(self.ws_url, token, via, resume, **options)
        if expect_connected:
            client.connected = client.expect("connected")
        return client


class Client:
    def __init__(self, url: str, token: str | None, via: str = "message",
                 resume: dict[str, str] | None = None, timeout: float = 10.0,
                 origin: str | None = None, answer_pings: bool = True) -> None:
        if via == "query" and token is not None:
            url += "?token=" + token
            if resume:
                url += "&resume=" + urllib.request.quote(json.dumps(resume))
        headers = {"suppress_origin": True} if origin is None else {"origin": origin}
        self.ws = websocket.create_connection(url, timeout=timeout, **headers)
        self.answer_pings = answer_pings
        self.pings_answered = 0
        self.connected: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        if via == "message" and token is not None:
            self.send({"type": "auth", "token": token, **({"resume": resume} if resume else {})})

    def send(self, message: dict[str, Any] | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """Next JSON message (pings answered and skipped); ``None`` once the server closed."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                self.close_reason = data[2:].decode(errors="replace")
                try:
                    self.ws.send_close(self.close_code if self.close_code != 1005 else 1000)
                except (websocket.WebSocketException, OSError):
                    pass
                return None
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = json.loads(data)
            if message.get("type") == "ping" and self.answer_pings:
                self.send({"type": "pong"})
                self.pings_answered += 1
                continue
            self.received.append(message)
            return message

    def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        message = self.recv(timeout)
        assert message is not None, f"expected {kind}, got close {self.close_code} " \
                                    f"{self.close_reason!r}"
        assert message["type"] == kind, f"expected {kind}, got {message}"
        return message

    def expect_close(self, timeout: float = 10.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "server did not close the connection"
            try:
                message = self.recv(remaining)
            except websocket.WebSocketTimeoutException:
                continue
            if message is None:
                return self.close_code or 0, self.close_reason

    def poll(self, seconds: float) -> dict[str, Any] | None:
        """The next message if one arrives within ``seconds`` (pings answered and skipped);
        ``None`` if none did, or once the server closed (``close_code`` says which). For
        loops that read while waiting for something else: it proves nothing by itself."""
        try:
            return self.recv(seconds)
        except websocket.WebSocketTimeoutException:
            return None

    def pings_within(self, seconds: float) -> int:
        """Read for ``seconds``, answering every ping; the number of pings. Any other message,
        or a close, fails: this is for a test whose subject is time passing (heartbeats)."""
        pings = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"closed {data[:2].hex()} {data[2:]!r} while idle")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = json.loads(data)
            assert message.get("type") == "ping", f"{message} arrived while idle"
            self.send({"type": "pong"})
            pings += 1
        return pings

    def round_trip(self, timeout: float = 10.0) -> None:
        """A sentinel through the server's reader: send a WebSocket ping, read up to its pong.

        The server reads a client's frames in order, so whatever it answers to what was sent
        before the ping (an error, a close) is queued ahead of this pong: reaching the pong
        proves that nothing of the kind came. Pings of the server are answered on the way."""
        payload = os.urandom(8)
        self.ws.ping(payload)
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_PONG and data == payload:
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"closed {data[:2].hex()} {data[2:]!r} before the pong")
            if opcode == websocket.ABNF.OPCODE_TEXT:
                message = json.loads(data)
                assert message.get("type") == "ping", f"{message} arrived before the pong"
                self.send({"type": "pong"})

    def close(self) -> None:
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


def database_connections(database_url: str, application_name: str = "relay-listener") -> int:
    """Live connections with that application_name: a backend whose client process is gone
    (a relay stopped by the previous test, while PostgreSQL is still reaping it) does not
    count — only backends whose client socket is still held by a process on this machine."""

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT client_port FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,))
        rows = cur.fetchall()
    conn.close()
    held = {c.laddr.port for c in psutil.net_connections(kind="tcp")
            if c.pid is not None and c.laddr and c.status == psutil.CONN_ESTABLISHED}
    return sum(1 for (port,) in rows if port is None or port in held)


def execute(database_url: str, statement: str, params: tuple[Any, ...] = ()) -> None:

    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


SHARED_CHANNEL = "relay"  # RELAY_NOTIFY_CHANNEL's default: what relay_publish notifies


def notify(database_url: str, channel: str, payload: str) -> None:
    """Publish ``payload`` to ``channel`` the way an app does with relay's SQL installed:
    ``relay_publish`` (the shared channel). A payload that is not JSON cannot go that way: it
    is ``pg_notify``-ed on the channel itself, which a relay hears with per-user LISTEN."""
    try:
        json.loads(payload)
    except ValueError:
        notify_directly(database_url, channel, payload)
        return
    execute(database_url, "SELECT relay_publish(%s, %s::json)", (channel, payload))


def notify_directly(database_url: str, channel: str, payload: str) -> None:
    """``pg_notify`` on the user's own channel, as an app's own trigger does: heard with
    ``RELAY_USER_CHANNELS=listen`` (or ``auto`` before ``db install``)."""
    execute(database_url, "SELECT pg_notify(%s, %s)", (channel, payload))


class Published:
    """One notification as a reader of relay's channels sees it: the logical ``channel`` and
    its ``payload``, and whether it came through the shared channel (``via`` ``"shared"``,
    with the raw NOTIFY payload in ``frame``) or on the channel itself (``"direct"``)."""

    def __init__(self, channel: str, payload: str, via: str, frame: str = "") -> None:
        self.channel, self.payload, self.via, self.frame = channel, payload, via, frame

    def __repr__(self) -> str:
        return f"Published({self.channel!r}, {self.payload[:60]!r}, {self.via})"


# Frames that carry a message: n (numbered by the listener), m (numbered by the database), r
# (numbered, too big for one NOTIFY: the row is read from relay.outbox).
MESSAGE_KINDS = ("n", "m", "r")


def parse_frame(payload: str) -> tuple[str, str, str] | None:
    """``(kind, channel, body)`` of an r1 frame (docs/architecture.md, "The shared channel"),
    parsed independently of relay's own parser."""
    if not payload.startswith("r1 "):
        return None
    _, kind, _pos, _seq, _tag, chlen, rest = payload.split(" ", 6)
    length = int(chlen)
    assert rest[length] == " ", payload[:200]
    return kind, rest[:length], rest[length + 1:]


class NotifyListener:
    """A LISTEN connection that collects everything delivered up to a sentinel notification.

    NOTIFY delivers in commit order, so once our sentinel (committed after the writes under
    test) arrives, every notification of those writes has arrived too: no sleeps, and "nothing
    else was sent" is a real assertion. It LISTENs relay's shared channel and reports the
    messages (kinds ``n``, ``m`` and ``r``, whose row it reads) of the channels it was asked to
    ``listen`` to, and LISTENs those channels themselves too (what an app's own ``pg_notify``
    uses).
    """

    def __init__(self, conn: Any, shared: str | None = SHARED_CHANNEL) -> None:
        self.conn = conn
        self.shared = shared  # None: read relay's channel like any other, frames unparsed
        self.sentinel = f"sentinel_{uuid.uuid4().hex}"
        self.channels: set[str] = set()
        self._listen(self.sentinel)
        if shared is not None:
            self._listen(shared)

    def _listen(self, channel: str) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def listen(self, channel: str) -> None:
        self.channels.add(channel)
        self._listen(channel)

    def _read_row(self, payload: str) -> str:
        """The payload of a kind-r frame (too big for one NOTIFY), from the outbox."""
        pos = int(payload.split(" ", 3)[2])
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT payload FROM relay.read_from(%s, 1)", (pos - 1,))
            return cursor.fetchone()[0]

    def collect(self, timeout: float = 5.0) -> list[Published]:
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", (self.sentinel,))
        received: list[Published] = []
        deadline = time.monotonic() + timeout
        while True:
            self.conn.poll()
            while self.conn.notifies:
                notify = self.conn.notifies.pop(0)
                if notify.channel == self.sentinel:
                    return received
                if notify.channel == self.shared:
                    frame = parse_frame(notify.payload)
                    if frame and frame[0] in MESSAGE_KINDS and frame[1] in self.channels:
                        body = frame[2] if frame[0] != "r" else self._read_row(notify.payload)
                        received.append(Published(frame[1], body, "shared", notify.payload))
                elif notify.channel in self.channels:
                    received.append(Published(notify.channel, notify.payload, "direct"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"sentinel not delivered within {timeout}s; got {received}")
            select.select([self.conn], [], [], remaining)


class ProcessOutput:
    """A child's stdout read line by line with a timeout (straight from the pipe: a buffered
    reader could hold lines that ``select`` no longer sees)."""

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()
        self.text = ""  # everything read so far
        self._pending = b""

    def line(self, timeout: float) -> str | None:
        """The next line, or ``None`` at end of file; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise TimeoutError(f"no line within {timeout}s; output so far:\n{self.text}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        text = line.decode(errors="replace") + "\n"
        self.text += text
        return text

    def until(self, needle: str, timeout: float) -> str:
        """Read until a line contains ``needle``; return everything read so far."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"output ended before {needle!r}:\n{self.text}")
            if needle in line:
                return self.text


def assert_marker_comes_next(database_url: str, *clients: Client) -> None:
    """The sentinel for "nothing else arrived": NOTIFY a marker on each client's own channel,
    after whatever must not reach it, and assert that the marker is the next message each
    client reads (pings skipped). The listener hands notifications to a worker in commit
    order over one stream, and the worker to a connection in that order, so anything that
    was on its way to the client is read before the marker, however slow the machine."""
    marker = {"marker": secrets.token_hex(4)}
    for channel in dict.fromkeys(client.connected["channels"][-1] for client in clients):
        notify(database_url, channel, json.dumps(marker))
    for client in clients:
        message = client.recv()
        assert message is not None, (f"closed {client.close_code} {client.close_reason!r} "
                                     "before the marker")
        assert message.get("type") == "update" and message.get("data") == marker, (
            f"{message} arrived before the marker")


def raw_connected(relay: RelayProcess, user: str) -> RawClient:
    """A raw-socket WebSocket of ``user`` (``?token=``), once its ``connected`` arrived."""
    client = RawClient(relay.port, f"/ws?token={relay.token(user)}")
    assert json.loads(client.read_until(0x1) or b"{}").get("type") == "connected"
    return client
