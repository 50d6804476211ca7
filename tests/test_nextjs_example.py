"""The example Next.js app (examples/nextjs), end to end, the whole path a real app takes:
its migrations (with relay's trigger) on the test PostgreSQL, ``next build`` and
``next start``, a real relay, and headless Chromium signing in, seeing ``isConnected``,
clicking the button whose server action changes the user's row, and seeing relay's update.

Preparing the app is cached in the example's git-ignored folders: ``npm ci`` runs only when
package.json, the lock file or the packed client changed (key in node_modules/), ``next
build`` only when a source changed too (key in .next/). Nothing is fetched but npm packages:
telemetry is off, Next's compiler is the npm package @next/swc-*, the browser is Debian's,
and where this machine allows it the build runs without any network (``unshare -n``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support import (
    CHROMIUM,
    NODE,
    ROOT,
    SECRET,
    RelayProcess,
    execute,
    free_port,
    needs_chromium,
    needs_node,
    wait_for,
)

EXAMPLE = ROOT / "examples" / "nextjs"
NPM = shutil.which("npm")
SOURCES = ("app", "lib", "next.config.mjs", "tsconfig.json", "package.json")
TRIGGER_MIGRATION = EXAMPLE / "db" / "migrations" / "002_relay_trigger.sql"


def _tool_env() -> dict[str, str]:
    """npm and Next as CI runs them: no telemetry, no update checks, and nothing from this
    machine's environment baked into the build (NEXT_PUBLIC_* would be inlined)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEXT_", "RELAY_")) and k not in ("DATABASE_URL", "PORT")}
    return {**env, "NEXT_TELEMETRY_DISABLED": "1", "npm_config_update_notifier": "false",
            "npm_config_audit": "false", "npm_config_fund": "false"}


def _digest(*parts: str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            digest.update(part.encode())
            continue
        files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
        for path in files:
            digest.update(str(path.relative_to(EXAMPLE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _run(command: list[str], timeout: float, **options: Any) -> None:
    result = subprocess.run(command, cwd=EXAMPLE, env=_tool_env(), capture_output=True,
                            text=True, timeout=timeout, **options)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"


def _offline_prefix() -> list[str]:
    """``unshare -n``: run without any network, where this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def prepare_example() -> dict[str, float]:
    """Pack the client, install, build — each only when its inputs changed. Returns the
    seconds each step took (0 when it was cached)."""
    assert NODE is not None and NPM is not None
    timings = {}
    started = time.monotonic()
    _run([NODE, "scripts/pack-client.mjs"], 120)  # vendor/relay-client.tgz, ~1 s
    timings["pack"] = time.monotonic() - started

    deps_key = _digest(subprocess.run([NODE, "--version"], capture_output=True,
                                      text=True).stdout, EXAMPLE / "package.json",
                       EXAMPLE / "package-lock.json", EXAMPLE / "vendor" / "relay-client.tgz")
    deps_stamp = EXAMPLE / "node_modules" / ".relay-deps-key"
    started = time.monotonic()
    if not deps_stamp.exists() or deps_stamp.read_text() != deps_key:
        _run([NPM, "ci", "--loglevel=error"], 600)
        deps_stamp.write_text(deps_key)
    timings["npm ci"] = time.monotonic() - started

    build_key = _digest(deps_key, *(EXAMPLE / name for name in SOURCES))
    build_stamp = EXAMPLE / ".next" / ".relay-build-key"
    started = time.monotonic()
    if not (EXAMPLE / ".next" / "BUILD_ID").exists() or not build_stamp.exists() \
            or build_stamp.read_text() != build_key:
        _run([*_offline_prefix(), str(EXAMPLE / "node_modules" / ".bin" / "next"), "build"], 600)
        build_stamp.write_text(build_key)
    timings["next build"] = time.monotonic() - started
    return timings


@pytest.fixture(scope="module")
def built_example() -> dict[str, float]:
    return prepare_example()


class NextServer:
    """``next start`` of the built example on a loopback port."""

    def __init__(self, port: int, env: dict[str, str], logs: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.proc = subprocess.Popen(
            [str(EXAMPLE / "node_modules" / ".bin" / "next"), "start", "-p", str(port),
             "-H", "127.0.0.1"],
            cwd=EXAMPLE, env={**_tool_env(), **env}, stdout=logs.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> NextServer:
        def ready() -> bool:
            assert self.proc.poll() is None, self.logs.read_text()
            try:
                with urllib.request.urlopen(self.url + "/login", timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False
        wait_for(ready, 60, 0.2, "next start to serve /login")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _browse(app_url: str, user: str) -> dict[str, Any]:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "nextjs_e2e.mjs")], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "APP_URL": app_url, "USER_ID": user, "CHROMIUM": CHROMIUM or ""})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_trigger_migration_is_what_relay_db_trigger_prints() -> None:
    from relay.triggers import TriggerSpec

    spec = TriggerSpec.parse("Subscription", "Subscription", "userId",
                             columns="plan,status,updatedAt")
    committed = TRIGGER_MIGRATION.read_text()
    assert committed.endswith(spec.create_sql())
    assert "stripeCustomerId" not in spec.create_sql()  # the secret column is never sent


def test_the_lock_file_fetches_from_npm_only_and_accepts_any_packed_client() -> None:
    lock = json.loads((EXAMPLE / "package-lock.json").read_text())
    packages = {name: entry for name, entry in lock["packages"].items() if name}
    client = packages.pop("node_modules/@relay/client")
    # No integrity for the tarball packed from this checkout: npm ci must accept whatever
    # the client is now, not the bytes it was when the lock was written.
    assert client["resolved"] == "file:vendor/relay-client.tgz" and "integrity" not in client
    for name, entry in packages.items():  # npm leaves out "resolved" for some: the registry
        assert entry.get("resolved", "https://registry.npmjs.org/").startswith(
            "https://registry.npmjs.org/"), name
        assert entry["integrity"].startswith("sha512-"), name
    # Next's compiler comes from npm, as an optional dependency per platform.
    assert "node_modules/@next/swc-linux-x64-gnu" in packages


@needs_node
@needs_chromium
@pytest.mark.skipif(NPM is None, reason="npm is not installed")
@pytest.mark.slow
@pytest.mark.timeout(1200)  # a fresh machine downloads Next.js (npm ci) and builds it once
def test_sign_in_change_the_row_and_see_relays_update_on_the_page(
        built_example: dict[str, float], relay_factory: Callable[..., RelayProcess],
        postgres_url: str, tmp_path: Path) -> None:
    assert NODE is not None
    # The example's own migrations: its table, then relay's trigger (relay's functions are
    # installed, as `relay db install` leaves an app's database).
    result = subprocess.run([NODE, "scripts/migrate.mjs"], cwd=EXAMPLE, capture_output=True,
                            text=True, timeout=60,
                            env={**_tool_env(), "DATABASE_URL": postgres_url})
    assert result.returncode == 0, result.stderr
    assert "applied 002_relay_trigger.sql" in result.stdout

    app_port = free_port()
    relay = relay_factory({"ALLOWED_ORIGINS": f"http://127.0.0.1:{app_port}",
                           "RELAY_DRAIN_SECONDS": "0"})
    user = f"next{uuid.uuid4().hex[:8]}"
    secret_column = f"cus_SECRET_{uuid.uuid4().hex[:8]}"
    execute(postgres_url, 'INSERT INTO "Subscription" ("userId", "plan", "stripeCustomerId") '
                          "VALUES (%s, 'free', %s)", (user, secret_column))
    env = {"DATABASE_URL": postgres_url, "WEBSOCKET_JWT_SECRET": SECRET,
           "NEXT_PUBLIC_WEBSOCKET_URL": f"ws://127.0.0.1:{relay.port}"}

    with NextServer(app_port, env, tmp_path / "next.log") as app:
        page = _browse(app.url, user)

    assert page["ok"], page
    assert page["heading"] == f"Signed in as {user}"
    assert (page["planBefore"], page["updatesBefore"]) == ("free", "0")
    assert page["planAfter"] == "pro"  # shown from relay's update: the action refreshes nothing
    updates = [json.loads(f) for f in page["frames"] if '"type":"update"' in f.replace(" ", "")]
    assert len(updates) == 1, page["frames"]
    assert updates[0]["channel"] == f"user_Subscription_{user}"
    assert updates[0]["data"]["row"]["plan"] == "pro"
    assert set(updates[0]["data"]["row"]) == {"id", "plan", "status", "updatedAt"}
    assert not any(secret_column in frame for frame in page["frames"])  # --columns holds
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute('SELECT plan FROM "Subscription" WHERE "userId" = %s', (user,))
        assert cur.fetchone() == ("pro",)
    conn.close()
