"""Deployment files: the Docker image's command serves from a clean checkout with production
dependencies only, and fly.toml, gunicorn.conf.py and the README agree with each other."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.support import ROOT, SECRET, Client, free_port, wait_for


def _final_stage() -> list[str]:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    return instructions[starts[-1]:]


def _dockerfile() -> dict[str, object]:
    stage = _final_stage()
    copies, workdir, cmd, user = [], "/", None, "root"
    for line in stage:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            copies.extend(sources)
        elif keyword == "WORKDIR":
            workdir = rest
        elif keyword == "CMD":
            cmd = json.loads(rest)
        elif keyword == "USER":
            user = rest
    return {"copies": copies, "workdir": workdir, "cmd": cmd, "user": user}


def test_dockerfile_runs_gunicorn_as_a_non_root_user_without_secrets() -> None:
    spec = _dockerfile()
    assert spec["cmd"] == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert spec["user"] not in ("root", "0")
    text = (ROOT / "Dockerfile").read_text()
    assert "WEBSOCKET_JWT_SECRET=" not in text and "DATABASE_URL=" not in text
    assert len([line for line in text.splitlines() if line.startswith("FROM ")]) >= 2
    assert "requirements-dev" not in text
    assert (ROOT / ".dockerignore").exists()


@pytest.mark.timeout(600)
def test_image_command_serves_health_from_a_clean_checkout_with_production_deps(
        tmp_path: Path, postgres_url: str, schema_installed: list[str]) -> None:
    spec = _dockerfile()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    app = tmp_path / "app"
    for source in spec["copies"]:  # type: ignore[union-attr]
        source = source.rstrip("/")
        for name in tracked:
            if name == source or name.startswith(source + "/"):
                target = app / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target)
    assert (app / "wsgi.py").exists() and (app / "relay" / "app.py").exists()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements.txt")], check=True, timeout=500)
    port = free_port()
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DATABASE_URL": postgres_url,
        "WEBSOCKET_JWT_SECRET": SECRET,
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "RELAY_SOCKET_PATH": str(tmp_path / "listener.sock"),
    }
    cmd = list(spec["cmd"])  # type: ignore[arg-type]
    proc = subprocess.Popen(cmd, cwd=app, env=env, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "stderr.log").open("wb"))
    try:
        import urllib.request

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 30, 0.2, "the image's command to serve /health")
        from relay.auth import issue_token

        client = Client(f"ws://127.0.0.1:{port}/ws", issue_token("docker", SECRET.encode()))
        assert client.recv()["type"] == "connected"  # type: ignore[index]
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)


def _gunicorn_values(env: dict[str, str]) -> dict[str, object]:
    script = ("import runpy, json; v = runpy.run_path('gunicorn.conf.py'); "
              "print(json.dumps({k: v[k] for k in ('bind', 'workers', 'worker_connections', "
              "'graceful_timeout')}))")
    clean = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://u@db.internal/app",
             "WEBSOCKET_JWT_SECRET": SECRET, **env}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_fly_toml_matches_gunicorn_and_the_readme() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    env = fly["env"]
    values = _gunicorn_values({k: str(v) for k, v in env.items()})
    service = fly["http_service"]
    assert service["internal_port"] == int(env["PORT"])
    assert values["bind"] == [f"0.0.0.0:{env['PORT']}"]
    assert [c["path"] for c in service["checks"]] == ["/health"]
    slots = int(values["workers"]) * int(values["worker_connections"])  # type: ignore[arg-type]
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    assert concurrency["soft_limit"] < concurrency["hard_limit"] < slots
    assert fly["kill_signal"] == "SIGTERM"
    assert fly["kill_timeout"] > int(values["graceful_timeout"])  # type: ignore[arg-type]
    assert service["auto_stop_machines"] in ("off", False)
    readme = (ROOT / "README.md").read_text()
    assert "fly secrets set" in readme
    assert re.search(r"`PORT`[^\n]*`3000`", readme)
    assert "/health" in readme
