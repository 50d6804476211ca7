"""The processes a benchmark run starts: PostgreSQL, the servers under test, the clients.

* ``Database`` — an embedded PostgreSQL in the run's temporary directory (``relay.dev.postgres``),
  with ``max_connections`` raised through ``ALTER SYSTEM`` so that the per-client design can
  be measured; it reports the connections and the memory of the backends a server uses.
* ``RelayServer`` — ``gunicorn -c gunicorn.conf.py wsgi:app`` exactly as production runs it
  (only ``--bind`` is narrowed to 127.0.0.1; with a probe directory, bench/gunicorn_probe.conf.py
  adds a loop-lag probe to each worker); ``NodeServer`` — a peer under bench/peers.
* ``LoadGenerators`` — the ``bench.loadgen`` processes, each on its own loopback address.

Everything listens on 127.0.0.1 and is stopped by ``stop()`` (or at exit of ``bench.run``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
SECRET = "bench-secret-" + "b" * 40


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory(processes: list[psutil.Process]) -> dict[str, int]:
    """Summed RSS and USS (pages private to the process) in bytes; gone processes count 0."""
    rss = uss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        uss += info.uss
    return {"rss": rss, "uss": uss}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class Database:
    def __init__(self, workdir: Path, max_connections: int) -> None:
        from relay.dev.postgres import EmbeddedPostgres

        self.server = EmbeddedPostgres(workdir / "pg")
        self.max_connections = max_connections

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        import psycopg2

        self.server.start()
        if self.max_connections > 400:
            conn = psycopg2.connect(self.url)
            conn.autocommit = True
            with conn.cursor() as cur:
                # postgresql.auto.conf is read after relay.dev.postgres's settings file.
                cur.execute(f"ALTER SYSTEM SET max_connections = {int(self.max_connections)}")
            conn.close()
            self.server.restart()

    def stop(self) -> None:
        self.server.stop("immediate")

    def backends(self, application_name: str) -> list[int]:
        import psycopg2

        conn = psycopg2.connect(self.url, application_name="bench")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,))
                return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()

    def usage(self, application_name: str) -> dict[str, Any]:
        """The backends ``application_name`` holds, their memory, and the whole server's."""
        pids = self.backends(application_name)
        backends = memory([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)])
        return {"connections": len(pids), "backendRss": backends["rss"],
                "backendUss": backends["uss"], "server": memory(self.processes())}

    def processes(self) -> list[psutil.Process]:
        lines = (self.server.data_dir / "postmaster.pid").read_text().splitlines()
        postmaster = psutil.Process(int(lines[0]))
        return [postmaster, *postmaster.children(recursive=True)]


class Server:
    """A server under test: started as a process tree, measured, stopped."""

    name = ""
    application_name = ""  # what its PostgreSQL connections call themselves

    def __init__(self, workdir: Path, database_url: str, port: int | None = None,
                 instance: str = "") -> None:
        self.workdir = workdir / (self.name + instance)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        args, cwd, env = self.command()
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "stdout.log").open("ab"),
            stderr=(self.workdir / "stderr.log").open("ab"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        return self.health() is not None

    def health(self) -> dict[str, Any] | None:
        return self._health(self.port)

    def _health(self, port: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                        timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def measured(self) -> list[psutil.Process]:
        """The processes whose memory counts for this server."""
        return self.tree()

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for process in tree:  # never leave a listener or a worker behind
            try:
                process.kill()
            except psutil.Error:
                pass
        self.proc = None

    def terminate(self, timeout: float) -> float | None:
        """SIGTERM to the master, as a deploy stops a machine; the seconds until it exited
        (``None`` if it had to be killed after ``timeout``). Nothing of the tree is left."""
        if self.proc is None:
            return None
        tree = self.tree()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            seconds: float | None = time.monotonic() - started
        except subprocess.TimeoutExpired:
            seconds = None
        self.stop()
        for process in tree:
            try:
                process.wait(5)
            except psutil.Error:
                pass
        return seconds

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("stdout.log", "stderr.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class RelayServer(Server):
    name = "relay"
    application_name = "relay-listener"

    def __init__(self, workdir: Path, database_url: str, workers: int,
                 connections: int, *, worker_connections: int | None = None,
                 env: dict[str, str] | None = None, probe_dir: Path | None = None,
                 port: int | None = None, instance: str = "",
                 internal_port: int | None = None) -> None:
        super().__init__(workdir, database_url, port, instance)
        # RELAY_INTERNAL_PORT: /health and /metrics on their own accept queue, which a
        # reconnect storm on the main port cannot fill; the readiness poll and the figures
        # read them there (bench/healthwatch.py also asks the main port, for contrast).
        self.internal_port = internal_port or free_port()
        self.workers = workers
        self.connections = connections
        # Default: the gevent pool holds every WebSocket, whichever worker accepts it. The
        # scale scenario spreads 100,000 over several workers and sets it per worker instead.
        self.worker_connections = worker_connections or max(10_000, connections + 1_000)
        self.env = env or {}
        self.probe_dir = probe_dir

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update({
            "DATABASE_URL": self.database_url,
            "WEBSOCKET_JWT_SECRET": SECRET,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(self.workers),
            "RELAY_SOCKET_PATH": str(self.workdir / "listener.sock"),
            "RELAY_WORKER_CONNECTIONS": str(self.worker_connections),
            "RELAY_INTERNAL_PORT": str(self.internal_port),
            **self.env,
        })
        config = "gunicorn.conf.py"
        if self.probe_dir is not None:
            self.probe_dir.mkdir(parents=True, exist_ok=True)
            env["BENCH_PROBE_DIR"] = str(self.probe_dir)
            config = "bench/gunicorn_probe.conf.py"
        args = [sys.executable, "-m", "gunicorn", "-c", config,
                "--bind", f"127.0.0.1:{self.port}", "--bind", f"127.0.0.1:{self.internal_port}",
                "wsgi:app"]
        return args, ROOT, env

    def health(self) -> dict[str, Any] | None:
        return self._health(self.internal_port)

    def ready(self) -> bool:
        body = self.health()
        return bool(body and body.get("status") == "healthy"
                    and body["listener"]["workers"] >= self.workers)

    def roles(self) -> dict[str, list[psutil.Process]]:
        """Every process of the instance by role: master, supervisor, listener, worker."""
        tree = self.tree()
        found: dict[str, list[psutil.Process]] = {"master": tree[:1], "supervisor": [],
                                                  "listener": [], "worker": []}
        for process in tree[1:]:
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:
                continue
            role = ("supervisor" if "relay supervise" in command
                    else "listener" if "relay listen" in command else "worker")
            found[role].append(process)
        return found

    def measured(self) -> list[psutil.Process]:
        """The listener and the workers (the master and the supervisor do not grow)."""
        if self.proc is None:
            return []
        found = []
        for process in self.tree()[1:]:
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if "relay supervise" not in command:
                found.append(process)
        return found


class NodeServer(Server):
    def __init__(self, workdir: Path, database_url: str, peer: str) -> None:
        self.name = peer
        self.application_name = peer
        super().__init__(workdir, database_url)

    def command(self) -> tuple[list[str], Path, dict[str, str]]:
        env = {**os.environ, "DATABASE_URL": self.database_url, "WEBSOCKET_JWT_SECRET": SECRET,
               "PORT": str(self.port), "HOST": "127.0.0.1"}
        return [node_binary(), "server.js"], PEERS / self.name, env


def node_binary() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("the node-ws and per-client-listen peers need Node.js on PATH")
    return found


def install_peers() -> None:
    """``npm ci`` in each peer directory whose node_modules is missing or stale."""
    if shutil.which("npm") is None:
        raise SystemExit("bench: the node-ws and per-client-listen peers need Node.js 18+ and "
                         "npm on PATH (or run only relay: --servers relay)")
    for peer in ("node-ws", "per-client-listen"):
        directory = PEERS / peer
        stamp = directory / "node_modules" / ".package-lock.json"
        lock = directory / "package-lock.json"
        if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
            continue
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=directory, check=True)


class LoadGenerators:
    """``count`` load-generator processes aimed at one server, driven in lock step."""

    def __init__(self, count: int, port: int) -> None:
        env = {**os.environ, "BENCH_JWT_SECRET": SECRET}
        # Each process its own loopback source address: a connection's client port is unique
        # per source address (32768–60999 here: ~28,000 each), and 100,000 need several.
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", "--port", str(port),
                 "--source", f"127.0.0.{10 + index}"],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True)
            for index in range(count)
        ]
        self.processes = [psutil.Process(p.pid) for p in self.procs]

    def __len__(self) -> int:
        return len(self.procs)

    def each(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one command to each process at once; wait for every answer."""
        for proc, command in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        replies = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator {proc.pid} exited ({proc.poll()})")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"load generator {proc.pid}: {reply['error']}")
            replies.append(reply)
        return replies

    def all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        return self.each([command] * len(self.procs))

    def cpu(self) -> list[float]:
        return [cpu_seconds([process]) for process in self.processes]

    def stop(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write('{"cmd":"quit"}\n')
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
