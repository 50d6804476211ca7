"""fly.toml, gunicorn.conf.py, the README and docs/operations.md tell the same story: port,
health check path, connection limits, kill timeout, and every gunicorn knob's default.

gunicorn.conf.py is executed in a subprocess with a controlled environment, exactly as
gunicorn would load it, and its values (including the derived ``relay_*`` ones) compared."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from typing import Any

from tests.support import ROOT, SECRET

_VALUES = ("bind", "workers", "worker_connections", "timeout", "graceful_timeout",
           "max_requests", "preload_app", "control_socket_disable", "relay_websockets_per_worker",
           "relay_websockets_per_machine", "relay_open_files_per_worker")


def gunicorn_values(env: dict[str, str]) -> dict[str, Any]:
    """The settings gunicorn.conf.py gives gunicorn under ``env`` (and nothing else)."""
    script = ("import json, runpy; v = runpy.run_path('gunicorn.conf.py'); "
              f"print(json.dumps({{k: v[k] for k in {_VALUES!r}}}))")
    clean = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://u@db.internal/app",
             "WEBSOCKET_JWT_SECRET": SECRET, **env}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def _fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def _mentions_number(text: str, number: int) -> bool:
    """``16000`` written as 16000, 16,000 or 16 000."""
    spelled = {str(number), f"{number:,}", f"{number:,}".replace(",", " ")}
    return any(re.search(rf"(?<!\d)(?<!\d,){re.escape(s)}(?!\d|,\d)", text)
               for s in spelled)


def test_gunicorn_knobs_have_their_documented_defaults() -> None:
    values = gunicorn_values({})
    assert values["bind"] == ["0.0.0.0:3000"]
    assert values["workers"] == (os.cpu_count() or 1)
    assert values["worker_connections"] == 256  # RELAY_HANDSHAKE_CONCURRENCY: the gevent pool
    assert values["timeout"] == 30
    assert values["graceful_timeout"] == 10 + 10  # RELAY_DRAIN_SECONDS + 10
    assert values["max_requests"] == 0  # a recycled worker would drop every WebSocket
    assert values["preload_app"] is False
    assert values["control_socket_disable"] is True  # operated by signals, not gunicornc
    assert values["relay_websockets_per_worker"] == 9900
    assert values["relay_websockets_per_machine"] == values["workers"] * 9900
    assert values["relay_open_files_per_worker"] == 10000 + 64


def test_gunicorn_knobs_follow_the_environment() -> None:
    values = gunicorn_values({"PORT": "8080", "WEB_CONCURRENCY": "3",
                              "RELAY_WORKER_CONNECTIONS": "500", "RELAY_WORKER_TIMEOUT": "45",
                              "RELAY_DRAIN_SECONDS": "2.5", "RELAY_HANDSHAKE_CONCURRENCY": "64"})
    assert values["bind"] == ["0.0.0.0:8080"]
    assert values["workers"] == 3
    assert values["worker_connections"] == 64
    assert values["relay_open_files_per_worker"] == 500 + 64
    assert values["timeout"] == 45
    assert values["graceful_timeout"] == 3 + 10
    assert values["relay_websockets_per_worker"] == 490  # 1 %, at least 10, kept for /health
    assert values["relay_websockets_per_machine"] == 3 * 490


def test_internal_port_is_bound_only_when_set() -> None:
    assert gunicorn_values({"RELAY_INTERNAL_PORT": "9091"})["bind"] == \
        ["0.0.0.0:3000", "0.0.0.0:9091"]
    assert gunicorn_values({"RELAY_DEV": "1", "RELAY_INTERNAL_PORT": "9091"})["bind"] == \
        ["127.0.0.1:3000", "127.0.0.1:9091"]


def test_development_mode_binds_loopback_only() -> None:
    # `make run` sets RELAY_DEV: its /demo/token must not be reachable from the network.
    assert gunicorn_values({"RELAY_DEV": "1"})["bind"] == ["127.0.0.1:3000"]
    assert gunicorn_values({"RELAY_HOST": "127.0.0.1"})["bind"] == ["127.0.0.1:3000"]


def test_fly_toml_agrees_with_gunicorn_conf() -> None:
    fly = _fly()
    env = fly["env"]
    values = gunicorn_values({k: str(v) for k, v in env.items()})
    service = fly["http_service"]
    assert service["internal_port"] == int(env["PORT"])
    # The health check targets RELAY_INTERNAL_PORT, bound beside PORT, where a reconnect
    # storm's queue cannot hold it; no service check on the clients' port.
    internal = int(env["RELAY_INTERNAL_PORT"])
    assert internal != int(env["PORT"])
    assert values["bind"] == [f"0.0.0.0:{env['PORT']}", f"0.0.0.0:{internal}"]
    assert "checks" not in service
    checks = list(fly["checks"].values())
    assert [(c["type"], c["port"], c["path"]) for c in checks] == [("http", internal, "/health")]
    assert all(c.get("method", "GET") == "GET" for c in checks)
    concurrency = service["concurrency"]
    assert concurrency["type"] == "connections"
    # The proxy must stop sending a machine WebSockets before relay itself refuses them.
    assert concurrency["soft_limit"] < concurrency["hard_limit"]
    assert concurrency["hard_limit"] <= values["relay_websockets_per_machine"]
    assert fly["kill_signal"] == "SIGTERM"
    assert fly["kill_timeout"] > values["graceful_timeout"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 1
    # One worker per vCPU of the machine size (shared-cpu-2x, performance-4x, …).
    size = fly["vm"][0]["size"]
    assert values["workers"] == int(re.search(r"(\d+)x$", size).group(1))  # type: ignore[union-attr]


def test_readme_states_the_fly_numbers() -> None:
    fly = _fly()
    readme = (ROOT / "README.md").read_text()
    assert "fly secrets set" in readme
    assert "DATABASE_URL" in readme and "WEBSOCKET_JWT_SECRET" in readme
    assert re.search(r"`PORT`[^\n]*`3000`", readme)
    assert "/health" in readme
    concurrency = fly["http_service"]["concurrency"]
    for number in (concurrency["soft_limit"], concurrency["hard_limit"], fly["kill_timeout"]):
        assert _mentions_number(readme, number), f"README does not mention {number}"


def test_operations_doc_lists_every_gunicorn_knob_with_its_default() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    fly = _fly()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines()
            if line.startswith("| `")}
    for knob, default in (("WEB_CONCURRENCY", "CPU count"), ("RELAY_WORKER_CONNECTIONS", "10000"),
                          ("RELAY_INTERNAL_PORT", "unset"),
                          ("RELAY_HANDSHAKE_CONCURRENCY", "256"),
                          ("RELAY_WORKER_TIMEOUT", "30"), ("RELAY_DRAIN_SECONDS", "10")):
        row = rows.get(f"`{knob}`")
        assert row is not None, f"docs/operations.md has no row for {knob}"
        assert default in row, f"{knob}'s row does not give its default {default}"
    concurrency = fly["http_service"]["concurrency"]
    for number in (concurrency["soft_limit"], concurrency["hard_limit"], fly["kill_timeout"]):
        assert _mentions_number(doc, number), f"docs/operations.md does not mention {number}"


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def test_fly_toml_marks_its_placeholders() -> None:
    text = (ROOT / "fly.toml").read_text()
    header = text[:text.index("\napp = ")]
    assert "PLACEHOLDERS" in header and "ALLOWED_ORIGINS" in header and "app " in header
    for key in ("app = ", "ALLOWED_ORIGINS = "):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "PLACEHOLDER" in line, line


def test_fly_deploys_run_relays_db_install() -> None:
    assert _fly()["deploy"]["release_command"] == "python -m relay db install"
    assert "release_command" in _readme_section("Deploy on Fly.io")


def test_readme_deploy_steps_name_the_app_in_one_place() -> None:
    deploy = _readme_section("Deploy on Fly.io")
    assert deploy.count("export RELAY_APP=") == 1
    hosts = re.findall(r"[\w$.{}-]+\.fly\.dev", deploy)
    assert hosts and all(host == "$RELAY_APP.fly.dev" for host in hosts), hosts
    # Vercel's Neon integration: the pooled URL in DATABASE_URL, the direct one for relay
    assert "DATABASE_URL_UNPOOLED" in deploy
    assert "one secret per environment" in deploy.lower()


def test_readme_commands_use_the_virtualenvs_python() -> None:
    # A bare `python` outside the virtualenv lacks relay's dependencies (the image's own
    # `python -m relay db install`, run by Fly, is the exception: its PATH is the venv).
    readme = (ROOT / "README.md").read_text()
    bare = [line for line in readme.splitlines()
            if re.search(r"(^|[\s`(])python3? -m relay", line) and "release" not in line
            and "temporary machine" not in line]
    assert bare == []
