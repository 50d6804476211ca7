"""Keeps exactly one listener process alive per relay instance, and dies with gunicorn.

gunicorn's master spawns the supervisor once, from the ``on_starting`` hook (not at config
load: SIGHUP re-executes the config file), so reloads and worker restarts never start a
second listener. gunicorn reaps every child of the master and runs no hook for a non-worker
child (trap 7), so the supervisor is a separate process that restarts the listener itself,
and both ask the kernel to signal them when their parent dies (``PR_SET_PDEATHSIG``), with
a ``getppid()`` check as a fallback: kill -9 the master and the listener and its database
connection are gone within a second.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("relay.supervisor")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to this child when its parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() checks still apply


def spawn_supervisor() -> subprocess.Popen[bytes]:
    """Called in gunicorn's master: start ``python -m relay supervise`` as its child."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "supervise", "--parent-pid", str(os.getpid())],
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


def run_supervisor(parent_pid: int) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
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
            time.sleep(0.1)
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
