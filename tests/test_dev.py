"""``make run`` (``python -m relay dev``): a taken port says which variable to set, development
origins follow the port, and Ctrl-C stops everything without a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from relay.dev.run import _dev_origins
from tests.support import ROOT, SECRET, ProcessOutput, free_port


def _dev_env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("RELAY_") and k not in ("DATABASE_URL", "PORT",
                                                         "WEBSOCKET_JWT_SECRET")}
    return {**clean, **extra}


def test_a_taken_port_says_which_variable_to_set(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:  # e.g. `next dev`, which also defaults to 3000
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "relay", "dev", "--state-dir", str(tmp_path / "state")],
            cwd=ROOT, env=_dev_env(PORT=str(port)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"relay: dev: port {port} is in use by another program (next dev also takes 3000): "
        f"choose another with PORT, e.g. make run PORT={port + 1}")
    assert not (tmp_path / "state").exists()  # refused before starting anything


def test_development_origins_follow_the_port_and_admit_next_dev() -> None:
    assert _dev_origins("3001") == [
        "http://localhost:3001", "http://127.0.0.1:3001",
        "http://localhost:3000", "http://127.0.0.1:3000"]
    assert _dev_origins("3000") == ["http://localhost:3000", "http://127.0.0.1:3000"]


@pytest.mark.slow
def test_ctrl_c_stops_everything_quietly(postgres_url: str, schema_installed: list[str],
                                         tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "dev", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=_dev_env(PORT=str(port), DATABASE_URL=postgres_url,
                               WEBSOCKET_JWT_SECRET=SECRET, RELAY_DRAIN_SECONDS="0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group, as a terminal gives `make run`
    output = ProcessOutput(proc.stdout)
    started: list[psutil.Process] = []
    try:
        banner = output.until("A fresh token", timeout=60)
        assert f"Browser origins allowed: http://localhost:{port}," in banner
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 5  # gunicorn master, 2 workers, supervisor, listener

        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the group
        while output.line(timeout=30) is not None:
            pass
        assert proc.wait(timeout=30) == 0, output.text
    finally:
        if proc.poll() is None:
            proc.kill()
        for process in started:  # never leave a relay behind, even when the test failed
            try:
                process.kill()
            except psutil.Error:
                pass
        proc.wait()
    assert "Traceback" not in output.text and "KeyboardInterrupt" not in output.text, output.text
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []


@pytest.mark.slow
def test_the_relay_never_outlives_a_killed_make_run(postgres_url: str,
                                                    schema_installed: list[str],
                                                    tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "dev", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=_dev_env(PORT=str(port), DATABASE_URL=postgres_url,
                               WEBSOCKET_JWT_SECRET=SECRET, RELAY_DRAIN_SECONDS="0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = ProcessOutput(proc.stdout)
    started: list[psutil.Process] = []
    try:
        output.until("A fresh token", timeout=60)
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()  # no chance to forward anything
        proc.wait()
        _, alive = psutil.wait_procs(started, timeout=20)
        assert alive == [], output.text
    finally:
        for process in started:
            try:
                process.kill()
            except psutil.Error:
                pass
