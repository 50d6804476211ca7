"""A real listener process (``python -m relay listen``) and a test speaking to it as a worker.

For tests whose subject is the listener at a scale no WebSocket test can reach on this
machine (thousands of users attached at once): the listener, its PostgreSQL connection and
the Unix socket are the real ones; the test plays one worker over ``relay.bus``, the wire a
gunicorn worker uses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relay import bus
from tests.support import ROOT, SECRET, wait_for


class ListenerProcess:
    def __init__(self, database_url: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(workdir / "listener.sock")
        self.log_path = workdir / "listener.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "DATABASE_URL": database_url,
            "WEBSOCKET_JWT_SECRET": SECRET,
            "RELAY_SOCKET_PATH": self.socket_path,
            "RELAY_LOG_FORMAT": "json",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ListenerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "listen"], cwd=ROOT,
                                     env=self.env, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.socket_path) or self._died(), 20,
                 message="the listener's socket")
        return self

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"listener exited {self.proc.returncode}:\n{self.logs()}")
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def worker(self) -> WorkerSide:
        return WorkerSide(self.socket_path)


class WorkerSide:
    """The worker's end of the listener socket: frames out, frames in, nothing else."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = bus.FrameReader()
        self.inbox: list[tuple[int, bytes]] = []
        self.stats: dict[str, Any] = {}  # the latest STATS_REPLY the listener pushed
        self.stats_seen = 0
        self._req = 0
        self.send(bus.encode(bus.HELLO, {"pid": os.getpid(), "bus": bus.VERSION}))

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def attach_frame(self, user: str, channels: list[str],
                     resume: dict[str, str] | None = None) -> bytes:
        self._req += 1
        return bus.encode(bus.ATTACH, {"req": self._req, "user": user, "channels": channels,
                                       "resume": resume or {}})

    def _pump(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the listener")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("no frame from the listener") from None
        if not data:
            raise ConnectionError("the listener closed the socket")
        for kind, body in self.reader.feed(data):
            if kind == bus.STATS_REPLY:
                self.stats = bus.decode_json(body)
                self.stats_seen += 1
            else:
                self.inbox.append((kind, body))

    def read(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next frame other than a stats push (which updates ``stats``)."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            self._pump(deadline)
        return self.inbox.pop(0)

    def answers(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The next ``count`` ATTACHED answers (updates in between are skipped)."""
        replies = []
        deadline = time.monotonic() + timeout
        while len(replies) < count:
            kind, body = self.read(max(0.1, deadline - time.monotonic()))
            if kind == bus.ATTACHED:
                replies.append(bus.decode_json(body))
        return replies

    def update(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next UPDATE: its channel and the client message."""
        while True:
            kind, body = self.read(timeout)
            if kind == bus.UPDATE:
                channel, frame = bus.decode_update(body)
                return channel, json.loads(bus.update_message(frame))

    def fresh_stats(self, predicate: Any = bool, timeout: float = 10.0) -> dict[str, Any]:
        """The listener's figures from a push after this call that satisfy ``predicate``."""
        seen = self.stats_seen
        deadline = time.monotonic() + timeout
        while self.stats_seen == seen or not predicate(self.stats):
            try:
                self._pump(deadline)
            except TimeoutError:
                raise AssertionError(f"listener figures never matched: {self.stats}") from None
        return self.stats

    def close(self) -> None:
        self.sock.close()
