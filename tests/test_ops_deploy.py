"""The Docker image, reproduced without Docker: its final stage's COPYs, WORKDIR, ENV, USER
and CMD, run from a clean checkout in a fresh virtualenv holding requirements.txt only, with
the environment Fly would give it (fly.toml's [env] and the two secrets), serve /health and
a WebSocket."""

from __future__ import annotations

import fnmatch
import json
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import tomllib
import urllib.request
import venv
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg2
import pytest

from relay.auth import issue_token
from tests.support import ROOT, SECRET, Client, free_port, wait_for


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every instruction, continuation lines joined."""
    joined: list[str] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    out = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> dict[str, Any]:
    instructions = _instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    spec: dict[str, Any] = {"copies": [], "workdir": "/", "env": {}, "cmd": None,
                            "user": "root", "stages": sum(k == "FROM" for k, _ in instructions)}
    for keyword, rest in instructions[start:]:
        if keyword == "COPY" and "--from=" not in rest:
            *sources, dest = shlex.split(rest)
            spec["copies"].append((sources, dest, spec["workdir"]))
        elif keyword == "WORKDIR":
            spec["workdir"] = rest
        elif keyword == "ENV":
            spec["env"].update(item.split("=", 1) for item in shlex.split(rest))
        elif keyword == "CMD":
            spec["cmd"] = json.loads(rest)
        elif keyword == "USER":
            spec["user"] = rest
    return spec


def _tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


def test_dockerfile_runs_gunicorn_as_a_non_root_user_without_secrets() -> None:
    spec = _final_stage()
    assert spec["cmd"] == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert spec["user"] not in ("root", "0")
    assert spec["stages"] >= 2  # build stage with pip; the final stage has no compiler or pip cache
    for _, arguments in _instructions():  # no secret in any ENV, ARG or RUN
        for secret in ("DATABASE_URL", "WEBSOCKET_JWT_SECRET", "RELAY_METRICS_TOKEN"):
            assert secret not in arguments
        assert "requirements-dev" not in arguments
    assert spec["env"].get("PORT") == "3000"


def test_dockerignore_keeps_secrets_out_and_the_copied_sources_in() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for secret_file in (".env", ".env.production", ".git", ".venv"):
        assert any(fnmatch.fnmatch(secret_file, p) for p in patterns), secret_file
    # Everything any stage copies from the context must reach it.
    sources = [source.rstrip("/") for keyword, rest in _instructions()
               if keyword == "COPY" and "--from=" not in rest for source in shlex.split(rest)[:-1]]
    copied = [f for source in sources for f in _tracked_files()
              if f == source or f.startswith(source + "/")]
    assert "requirements.txt" in copied
    assert copied
    for name in copied:
        parts = PurePosixPath(name).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        assert not any(fnmatch.fnmatch(prefix, p.rstrip("/")) for p in patterns
                       for prefix in prefixes if not p.startswith("**")), name


def _copy_like_docker(spec: dict[str, Any], root: Path) -> Path:
    """Place the tracked files each COPY names where the image would have them."""
    tracked = _tracked_files()
    for sources, dest, workdir in spec["copies"]:
        target_dir = root / PurePosixPath(workdir, dest).relative_to("/")
        for source in sources:
            source = source.rstrip("/")
            if source in tracked:  # a file: into the directory, or as the destination
                target = target_dir / Path(source).name if dest.endswith("/") else target_dir
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
                continue
            for name in tracked:  # a directory: its contents go into the destination
                if name.startswith(source + "/") and (ROOT / name).exists():
                    target = target_dir / name[len(source) + 1:]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / name, target)
    return root / PurePosixPath(spec["workdir"]).relative_to("/")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_command_serves_health_from_a_clean_checkout_with_production_deps(
        postgres_url: str, schema_installed: list[str], empty_database: str) -> None:
    spec = _final_stage()
    # Not under pytest's 0700 tmp directory: the image's user must be able to read it.
    root = Path(tempfile.mkdtemp(prefix="relay-image-"))
    os.chmod(root, 0o755)
    proc: subprocess.Popen[bytes] | None = None
    leftovers: list[str] = ["(not run)"]
    try:
        app = _copy_like_docker(spec, root)
        assert (app / "wsgi.py").exists() and (app / "relay" / "worker" / "app.py").exists()
        assert not (app / "tests").exists() and not (app / "requirements-dev.txt").exists()
        env_dir = root / "venv"
        venv.create(env_dir, with_pip=True)
        subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "-r", str(ROOT / "requirements.txt")], check=True, timeout=500)
        # Production dependencies only: nothing from requirements-dev.txt is importable.
        for dev_only in ("pytest", "psutil", "websocket"):
            found = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                                    f"import {dev_only}"], capture_output=True)
            assert found.returncode != 0, f"{dev_only} is installed in the image's venv"

        port = free_port()
        temp = root / "tmp"  # the image's /tmp: anyone may create, only the owner removes
        temp.mkdir()
        os.chmod(temp, 0o1777)
        fly_env = tomllib.loads((ROOT / "fly.toml").read_text())["env"]
        env = {
            **{k: v for k, v in spec["env"].items() if k != "PATH"},
            **{k: str(v) for k, v in fly_env.items()},
            "PATH": f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(app),
            "TMPDIR": str(temp),
            # `fly secrets set`:
            "DATABASE_URL": postgres_url,
            "WEBSOCKET_JWT_SECRET": SECRET,
            "PORT": str(port),
        }
        # Run as the image's unprivileged user would: nobody, in a directory it cannot write.
        user: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = {"user": pwd.getpwnam("nobody").pw_uid,
                    "group": pwd.getpwnam("nobody").pw_gid, "extra_groups": []}
        stderr_path = root / "stderr.log"
        proc = subprocess.Popen(spec["cmd"], cwd=app, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr_path.open("wb"), **user)

        def healthy() -> bool:
            assert proc is not None and proc.poll() is None, stderr_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 60, 0.2, "the image's command to serve /health")
        client = Client(f"ws://127.0.0.1:{port}/ws", issue_token("docker", SECRET.encode()))
        assert client.recv()["type"] == "connected"  # type: ignore[index]
        client.close()

        # fly.toml's release_command, as Fly runs it before a deploy: in the image, with the
        # secrets, against the app's database — relay's functions, and no example tables.
        release = shlex.split(tomllib.loads((ROOT / "fly.toml").read_text())
                              ["deploy"]["release_command"])
        result = subprocess.run(release, cwd=app, env={**env, "DATABASE_URL": empty_database},
                                capture_output=True, text=True, timeout=120, **user)
        assert result.returncode == 0, result.stderr
        assert "applied 003_relay_install.sql" in result.stdout
        assert "example" not in result.stdout
        with psycopg2.connect(empty_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regprocedure('relay_notify()') IS NOT NULL, "
                        "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')")
            assert cur.fetchone() == (True, 0)
        conn.close()
        assert not list(app.rglob("__pycache__")), "the app wrote into its read-only directory"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
            leftovers = [p.name for p in (root / "tmp").iterdir()]
        shutil.rmtree(root, ignore_errors=True)
    # The listener's private socket directory is gone with the clean exit.
    assert leftovers == []
