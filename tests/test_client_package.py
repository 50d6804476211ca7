"""client/ is an installable package (issue 15, item 6): `npm pack` makes a tarball that
installs into a fresh project, where both entry points import in Node (the React one with
React as the app's peer) and type-check as a TypeScript app (Next.js style) uses them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import CLIENT, NODE, needs_node

pytestmark = [pytest.mark.slow, needs_node]  # npm pack and an install: node, not the quick loop

NPM = shutil.which("npm")
NPM_QUIET = ["--no-audit", "--no-fund", "--loglevel=error"]


def npm(*args: str, cwd: Path) -> str:
    assert NPM is not None
    done = subprocess.run([NPM, *args], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as `npm pack` makes it (its prepack check runs too)."""
    if NPM is None:
        pytest.skip("npm is not installed")
    out = tmp_path_factory.mktemp("pack")
    stdout = npm("pack", "--json", "--pack-destination", str(out), *NPM_QUIET, cwd=CLIENT)
    # The prepack check prints its verdict first; npm's JSON follows.
    (packed,) = json.loads(stdout[stdout.find("[") :])
    return out / packed["filename"]


@pytest.fixture(scope="module")
def app(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project with the tarball and React installed, as an app would have them."""
    project = tmp_path_factory.mktemp("app")
    (project / "package.json").write_text(json.dumps(
        {"name": "app", "version": "1.0.0", "private": True, "type": "module"}))
    lock = json.loads((CLIENT / "package-lock.json").read_text())
    react = lock["packages"]["node_modules/react"]["version"]
    # React from npm's cache when the client's own install put it there.
    npm("install", "--prefer-offline", *NPM_QUIET, str(tarball), f"react@{react}", cwd=project)
    return project


def test_the_tarball_holds_the_sources_and_types_and_nothing_else(tarball: Path) -> None:
    with tarfile.open(tarball) as packed:
        names = {name.removeprefix("package/") for name in packed.getnames()}
    assert {"package.json", "README.md", "index.d.ts", "react.d.ts", "src/index.js",
            "src/react.js", "src/shared.js", "src/socket.js"} <= names
    assert not [n for n in names if n.startswith(("test", "node_modules"))], names
    manifest = json.loads(tarfile.open(tarball).extractfile("package/package.json").read())
    assert manifest["name"] == "@relay/client"
    assert not manifest.get("private")
    assert set(manifest["exports"]) >= {".", "./react"}


def test_both_entry_points_import_in_node_with_react_as_the_apps_peer(app: Path) -> None:
    assert NODE is not None
    script = """
      const client = await import('@relay/client');
      const react = await import('@relay/client/react');
      const React = await import('react');
      const seen = {
        client: Object.keys(client).sort(),
        react: Object.keys(react).sort(),
        hook: typeof react.useWebSocketUpdates,
        sameReact: (await import('react')) === React,
        stale: client.CLOSE_CODE.STALE_CONNECTION,
      };
      // Outside a browser there is nothing to share: a connection of its own.
      const c = client.createRealtimeClient({ url: 'ws://127.0.0.1:9/ws',
                                             WebSocketImpl: class {} });
      seen.role = c.role;
      console.log(JSON.stringify(seen));
    """
    done = subprocess.run([NODE, "--input-type=module", "-e", script], cwd=app,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert {"createRealtimeClient", "createSharedStore", "CLOSE_CODES", "MESSAGE_TYPE"} <= set(
        seen["client"])
    assert seen["react"] == ["useRealtimeUpdates", "useWebSocketUpdates"]
    assert seen["hook"] == "function"
    assert seen["stale"] == 4000
    assert seen["role"] == "none"
    # React resolves to the app's own copy (a peer), not one inside the package.
    assert not (app / "node_modules" / "@relay" / "client" / "node_modules").exists()


@pytest.mark.parametrize("resolution", ["bundler", "nodenext"])
def test_an_apps_typescript_finds_both_entry_points_types(app: Path, resolution: str) -> None:
    assert NODE is not None
    (app / "page.ts").write_text(
        "import { createRealtimeClient, type StateEvent, type Update } from '@relay/client';\n"
        "import { useWebSocketUpdates } from '@relay/client/react';\n"
        "const client = createRealtimeClient({ url: 'wss://relay.example/ws', share: false });\n"
        "client.onState((state, event: StateEvent) => console.log(state, event.code));\n"
        "export const status: { isConnected: boolean; subscriberCount: number } =\n"
        "  useWebSocketUpdates((update: Update) => console.log(update.table));\n"
        "// @ts-expect-error: not an option\n"
        "createRealtimeClient({ shared: true });\n")
    (app / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "target": "es2022", "lib": ["es2022", "dom"],
        "module": "preserve" if resolution == "bundler" else "nodenext",
        "moduleResolution": resolution, "types": []}, "files": ["page.ts"]}))
    tsc = CLIENT / "node_modules" / "typescript" / "bin" / "tsc"
    done = subprocess.run([NODE, str(tsc), "-p", str(app)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
