"""End-to-end in headless Chromium (Debian's binary driven by playwright-core, never a
downloaded browser): the /demo page and the React hook against a real relay."""


from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    CLIENT,
    BrowserScript,
    RelayProcess,
    execute,
    needs_chromium,
    needs_node,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes


class Browser(BrowserScript):
    def __init__(self) -> None:
        super().__init__("test-support/e2e.mjs")


@needs_node
@needs_chromium
@pytest.mark.timeout(180)
def test_demo_page_in_headless_chromium(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, tmp_path: Path) -> None:
    from tests.support import free_port

    port = free_port()
    env = {"RELAY_DEV": "1", "PORT": str(port), "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
           "RELAY_DRAIN_SECONDS": "0"}
    relay = relay_factory(env)
    browser = Browser()
    try:
        browser.step(step="open", url=f"{relay.http_url}/demo?userId=e2e")
        browser.step(step="wait", expr="document.getElementById('state').textContent === "
                                       "'connected'", timeoutMs=15000)
        # An UPDATE in PostgreSQL appears on the page within 1 s.
        execute(postgres_url, "INSERT INTO subscription (user_id, plan, status) "
                              "VALUES ('e2e', 'free', 'active')")
        execute(postgres_url, "UPDATE subscription SET plan = 'e2e-pro' WHERE user_id = 'e2e'")
        shown = browser.step(step="wait", timeoutMs=1000, expr=(
            "document.getElementById('subscription').textContent.includes('e2e-pro')"))
        assert shown["ms"] <= 1000
        # Kill the listener: the page keeps updating, with no resync (the new listener
        # takes the connection back from where it was: relay's outbox is the history).
        (listener,) = relay.listener_pids()
        os.kill(listener, signal.SIGKILL)
        wait_for(lambda: relay.listener_pids() not in ([], [listener])
                 and relay.health()[0] == 200, 10)
        execute(postgres_url, "UPDATE subscription SET plan = 'after-kill' WHERE user_id = 'e2e'")
        browser.step(step="wait", timeoutMs=5000, expr=(
            "document.getElementById('subscription').textContent.includes('after-kill')"))
        resyncs = browser.step(step="eval", expr="document.getElementById('resyncs').textContent")
        assert resyncs == "0", resyncs
        # Restart the whole relay on the same port: the page reconnects by itself.
        relay.stop()
        browser.step(step="wait", timeoutMs=10000,
                     expr="document.getElementById('state').textContent !== 'connected'")
        relay.start()
        browser.step(step="wait", timeoutMs=30000,
                     expr="document.getElementById('state').textContent === 'connected'")
        execute(postgres_url, "UPDATE subscription SET plan = 'after-restart' "
                              "WHERE user_id = 'e2e'")
        browser.step(step="wait", timeoutMs=5000, expr=(
            "document.getElementById('subscription').textContent.includes('after-restart')"))
    finally:
        browser.close()


@needs_node
@needs_chromium
@pytest.mark.timeout(180)
def test_react_hook_shares_one_connection_in_chromium(
        relay_factory: Callable[..., RelayProcess], postgres_url: str, tmp_path: Path) -> None:
    from tests.support import free_port

    bundle = tmp_path / "hook.js"
    subprocess.run([str(CLIENT / "node_modules" / ".bin" / "esbuild"),
                    "test-support/hook-page.jsx", "--bundle", "--format=esm",
                    f"--outfile={bundle}", "--define:process.env.NODE_ENV=\"production\"",
                    "--log-level=warning"], cwd=CLIENT, check=True, timeout=60)
    port = free_port()
    relay = relay_factory({"RELAY_DEV": "1", "PORT": str(port),
                           "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"})
    browser = Browser()
    try:
        page = f"{relay.http_url}/demo/hook-test?userId=hook"
        browser.step(step="serve", url=page, contentType="text/html", body=(
            '<!doctype html><div id="root"></div>'
            '<script type="module" src="/demo/hook-test.js"></script>'))
        browser.step(step="serve", url=f"{relay.http_url}/demo/hook-test.js",
                     contentType="text/javascript", body=bundle.read_text())
        browser.step(step="open", url=page)
        browser.step(step="wait", timeoutMs=15000, expr=(
            "window.hookState && window.hookState.status.length === 3 && "
            "window.hookState.status.every(s => s.isConnected && s.subscriberCount === 3)"))
        execute(postgres_url, "INSERT INTO subscription (user_id, plan, status) "
                              "VALUES ('hook', 'hooked', 'active')")
        browser.step(step="wait", timeoutMs=5000,
                     expr="window.hookState.updates.every(n => n === 1)")
        browser.step(step="wait", timeoutMs=5000,
                     expr="document.getElementById('w2').textContent.includes('hooked')")
        assert browser.step(step="eval", expr="window.hookState.sockets") == 1
        _, health = relay.fresh_health()  # /health serves what the listener pushes each second
        assert health["totalConnections"] == 1  # one connection for the whole page
    finally:
        browser.close()
