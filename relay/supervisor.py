"""Keeps exactly one listener process alive per relay instance, and dies with gunicorn.

gunicorn's master spawns the supervisor once, from the ``on_starting`` hook (not at config
load: SIGHUP re-executes the config file), so reloads and worker restarts never start a
second listener. gunicorn reaps every child of the master and runs no hook for a non-worker
child (trap 7), so the supervisor is a separate process that restarts the listener itself,
and both ask the kernel to signal them when their parent dies (``PR_SET_PDEATHSIG``), with
a ``getppid()`` check as a fallback: kill -9 the master and the listener and its database
connection are gone within a second.

The supervisor itself is watched by the master (``SupervisorProcess``, hooked into the
arbiter's main loop by ``watch_from_arbiter``): killed, it is started again, and the
listener it took with it comes back under the new one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relay.supervisor")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to this child when its parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() checks still apply


def spawn_supervisor(instance_started_at: float) -> subprocess.Popen[bytes]:
    """Called in gunicorn's master: start ``python -m relay supervise`` as its child."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "supervise", "--parent-pid", str(os.getpid()),
         "--instance-started-at", repr(instance_started_at)],
        preexec_fn=die_with_parent,
    )


def stop_supervisor(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    except ChildProcessError:
        pass  # gunicorn's waitpid(-1) reaped it first


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    if returncode == 0:
        # Also what Popen.poll() reports when gunicorn's waitpid(-1) reaped it first.
        return "exited with code 0 (or an unknown status)"
    return f"exited with code {returncode}"


class SupervisorProcess:
    """The master's handle on the supervisor: one at a time, started again when it dies.

    gunicorn reaps a dead supervisor silently (trap 7) and its listener dies with it, so
    without this the instance stayed up with /health 503, delivering nothing, for ever. The
    master has no thread to spare (it forks workers): ``check`` runs on every pass of the
    arbiter's main loop (about once a second, and after every signal). A supervisor that
    ran for ``STABLE_AFTER`` seconds is restarted at once; one that dies sooner waits 1 s,
    then twice as long each time, up to ``MAX_DELAY``, so one that cannot start never
    fork-loops.
    """

    STABLE_AFTER = 10.0
    MIN_DELAY = 1.0
    MAX_DELAY = 30.0

    def __init__(self, spawn: Callable[[float], subprocess.Popen[bytes]] = spawn_supervisor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._spawn = spawn
        self._clock = clock
        # /health's uptime counts from here, across listener and supervisor restarts.
        self.instance_started_at = time.time()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.stopping = False
        self.restarts = 0
        self._delay = 0.0
        self._restart_at: float | None = None  # set once a death has been noticed
        self._death = ""

    def start(self) -> None:
        self.proc = self._spawn(self.instance_started_at)
        self.started = self._clock()

    def reap(self) -> None:
        """Collect a dead supervisor's status before gunicorn's ``waitpid(-1)`` takes it."""
        if self.proc is not None:
            self.proc.poll()

    def check(self) -> None:
        """Start a new supervisor if the current one is dead, unless the master stops."""
        if self.stopping or self.proc is None:
            return
        now = self._clock()
        if self._restart_at is None:
            returncode = self.proc.poll()
            if returncode is None:
                return
            ran = now - self.started
            self._delay = (0.0 if ran >= self.STABLE_AFTER
                           else min(self.MAX_DELAY, max(self.MIN_DELAY, self._delay * 2)))
            self._restart_at = now + self._delay
            self._death = (f"relay listener supervisor (pid {self.proc.pid}) "
                           f"{describe_exit(returncode)} after {ran:.1f}s")
            if self._delay:
                log.error("%s; restarting it in %.0fs", self._death, self._delay)
        if now < self._restart_at:
            return
        try:
            self.start()
        except (OSError, subprocess.SubprocessError) as exc:
            self._delay = min(self.MAX_DELAY, max(self.MIN_DELAY, self._delay * 2))
            self._restart_at = now + self._delay
            log.error("%s; starting a new one failed (%s), retrying in %.0fs",
                      self._death, exc, self._delay)
            return
        self._restart_at = None
        self.restarts += 1
        log.error("%s; restarted it (pid %s)", self._death, self.proc.pid)

    def stop_restarting(self) -> None:
        """The master is stopping: a supervisor that dies from now on stays dead."""
        self.stopping = True

    def terminate(self) -> None:
        """Ask the current supervisor to stop (SIGTERM), without waiting for it: the master's
        last worker is gone, so the listener has nobody left to serve."""
        self.stop_restarting()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Clean halt (``on_exit``): no more restarts, and the current one is stopped."""
        self.stop_restarting()
        if self.proc is not None:
            stop_supervisor(self.proc, timeout)


def watch_from_arbiter(arbiter: Any, supervisor: SupervisorProcess) -> None:
    """Hook ``supervisor`` into gunicorn's arbiter (from ``on_starting``, once per master).

    ``manage_workers`` runs on every pass of the main loop, after signals and on reload:
    the check follows it. ``reap_workers`` (SIGCHLD, reload, stop) is preceded by a targeted
    ``waitpid`` on the supervisor, as gunicorn does for its dirty arbiter, so the exit
    status is known; once the master stops and has no worker left, it also tells the
    supervisor to stop. ``stop`` (TERM, INT, QUIT, a failed main loop) ends the restarts
    before anything else. The wrappers are attributes of the arbiter object, which a HUP
    keeps (it re-executes the config, not ``on_starting``).
    """
    manage_workers, reap_workers, stop = (
        arbiter.manage_workers, arbiter.reap_workers, arbiter.stop)

    def manage_workers_and_supervisor() -> None:
        manage_workers()
        supervisor.check()

    def reap_supervisor_and_workers() -> None:
        supervisor.reap()
        reap_workers()
        if supervisor.stopping and not arbiter.WORKERS:
            # The master stops and its last worker is gone: the listener can go now, while
            # gunicorn's stop loop sleeps its last 0.1 s and halts (on_exit waits for it).
            supervisor.terminate()

    def stop_restarting(graceful: bool = True) -> None:
        supervisor.stop_restarting()
        stop(graceful)

    arbiter.manage_workers = manage_workers_and_supervisor
    arbiter.reap_workers = reap_supervisor_and_workers
    arbiter.stop = stop_restarting


def run_supervisor(parent_pid: int, instance_started_at: float | None = None) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # A signal also writes to this pipe, which ends the wait below at once: a sleep finished
    # its 0.1 s first (every stop of the master waited for it).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    if instance_started_at is None:
        instance_started_at = time.time()
    delay = 0.0
    while not stopping:
        if os.getppid() != parent_pid:
            break
        started = time.monotonic()
        listener = subprocess.Popen(
            [sys.executable, "-m", "relay", "listen", "--parent-pid", str(os.getpid()),
             "--instance-started-at", repr(instance_started_at)],
            preexec_fn=die_with_parent,
        )
        log.info("listener started (pid %s)", listener.pid)
        while not stopping and listener.poll() is None:
            if os.getppid() != parent_pid:
                log.warning("gunicorn master %s is gone; stopping", parent_pid)
                stopping = True
                break
            if select.select([wake_read], [], [], 0.1)[0]:
                try:
                    os.read(wake_read, 512)
                except BlockingIOError:
                    pass
        if listener.poll() is None:
            listener.terminate()
            try:
                listener.wait(5)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()
            break
        if stopping:
            break
        ran = time.monotonic() - started
        log.error("listener (pid %s) exited with %s after %.1fs; restarting",
                  listener.pid, listener.returncode, ran)
        # A listener that dies at once (bad config, socket path) must not spin the CPU.
        delay = 0.05 if ran > 5 else min(5.0, max(0.2, delay * 2))
        time.sleep(delay)
    return 0
