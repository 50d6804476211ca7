"""Tabs share one WebSocket, in headless Chromium against a real relay (issue 16).

Debian's Chromium, driven by playwright-core through client/test-support/tabs.mjs; each page
is client/test-support/tabs-page.html, which runs the real client from client/src (served by
relay's dev-mode /demo routes, so the pages are on an origin in ALLOWED_ORIGINS).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    CLIENT,
    BrowserScript,
    RelayProcess,
    execute,
    free_port,
    needs_chromium,
    needs_node,
    wait_for,
)

pytestmark = [needs_node, needs_chromium, pytest.mark.slow]

PAGE = (CLIENT / "test-support" / "tabs-page.html").read_text()
TAKEOVER_S = 2.0  # the bound: another tab holds the connection within 2 s

ALL_CONNECTED = "window.tab && window.tab.client.state === 'connected'"
LEADS = ("window.tab && window.tab.client.role === 'leader' && "
         "window.tab.client.state === 'connected'")
NO_BROADCAST_CHANNEL = "delete window.BroadcastChannel;"
NO_WEB_LOCKS = "Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined });"


class Tabs(BrowserScript):
    """The driver: contexts (separate browser profiles) and their pages, by name."""

    def __init__(self, relay: RelayProcess) -> None:
        super().__init__("test-support/tabs.mjs")
        self.relay = relay
        self.pages: dict[str, str] = {}  # page → context

    def context(self, name: str, init: str | None = None) -> None:
        self.step(step="context", context=name, init=init)
        self.step(step="serve", context=name, url="**/demo/tabs*", contentType="text/html",
                  body=PAGE)

    def open(self, context: str, page: str, user: str, query: str = "") -> None:
        self.step(step="open", context=context, page=page,
                  url=f"{self.relay.http_url}/demo/tabs?userId={user}{query}")
        self.pages[page] = context

    def wait(self, pages: list[str], expr: str, timeout: float = 10.0,
             any_page: bool = False) -> dict[str, Any]:
        return self.step(step="wait", pages=pages, expr=expr, timeoutMs=int(timeout * 1000),
                         any=any_page)

    def eval(self, page: str, expr: str) -> Any:
        return self.step(step="eval", page=page, expr=expr)

    def plans(self, page: str) -> list[str]:
        return self.eval(page, "window.tab.updates.map(u => u.plan)")

    def leader(self, pages: list[str]) -> str:
        (leader,) = [p for p in pages if self.eval(p, "window.tab.client.role") == "leader"]
        return leader

    def close_page(self, page: str) -> None:
        self.step(step="close-page", page=page)
        del self.pages[page]

    def close_context(self, context: str) -> None:
        self.step(step="close-context", context=context)
        self.pages = {p: c for p, c in self.pages.items() if c != context}


@pytest.fixture(scope="module")
def tabs_relay(postgres_url: str, schema_installed: list[str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    port = free_port()
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("tabs-relay"), env={
        "RELAY_DEV": "1", "PORT": str(port), "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"})
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def tabs(tabs_relay: RelayProcess) -> Iterator[Tabs]:
    driver = Tabs(tabs_relay)
    try:
        yield driver
    finally:
        driver.close()
    # The next test counts connections: this one's must be gone.
    wait_for(lambda: tabs_relay.health()[1].get("totalConnections") == 0, 10,
             message="the test's connections to close")


def connections(relay: RelayProcess) -> tuple[int, int]:
    _, health = relay.health()
    return health["totalConnections"], health["connectedUsers"]


def settle_connections(relay: RelayProcess, expected: tuple[int, int]) -> None:
    wait_for(lambda: connections(relay) == expected, 10,
             message=f"/health to show {expected} (connections, users), not {connections(relay)}")


def set_plan(postgres_url: str, user: str, plan: str) -> None:
    execute(postgres_url, "UPDATE subscription SET plan = %s WHERE user_id = %s", (plan, user))


def add_row(postgres_url: str, user: str, plan: str) -> None:
    execute(postgres_url, "INSERT INTO subscription (user_id, plan, status) "
                          "VALUES (%s, %s, 'active')", (user, plan))


def has_plan(plan: str) -> str:
    return f"window.tab.updates.some(u => u.plan === {json.dumps(plan)})"


@pytest.mark.timeout(150)
def test_three_tabs_share_one_connection_and_hand_over_without_loss_or_duplicate(
        tabs: Tabs, tabs_relay: RelayProcess, postgres_url: str) -> None:
    user = "tabs-share"
    pages = ["p1", "p2", "p3"]
    tabs.context("a")
    for page in pages:
        tabs.open("a", page, user)
    tabs.wait(pages, ALL_CONNECTED, 15)
    settle_connections(tabs_relay, (1, 1))
    assert sum(tabs.eval(p, "window.tab.sockets.length") for p in pages) == 1

    # One update reaches each of the three once: a marker committed after it arrives
    # everywhere, and before it each page has exactly the one update.
    add_row(postgres_url, user, "first")
    set_plan(postgres_url, user, "marker-1")
    tabs.wait(pages, has_plan("marker-1"), 5)
    for page in pages:
        assert tabs.plans(page) == ["first", "marker-1"], page

    # The leader closes while updates are being committed: another page holds the connection
    # within 2 s, and every update reaches each remaining page exactly once, in order.
    leader = tabs.leader(pages)
    rest = [p for p in pages if p != leader]
    committed = [f"handover-{i}" for i in range(25)]

    def commit() -> None:
        for plan in committed:
            set_plan(postgres_url, user, plan)
            time.sleep(0.03)

    writer = threading.Thread(target=commit)
    writer.start()
    time.sleep(0.2)
    closed_at = time.monotonic()
    tabs.close_page(leader)
    took = tabs.wait(rest, LEADS, TAKEOVER_S, any_page=True)
    elapsed = time.monotonic() - closed_at
    writer.join()
    assert elapsed <= TAKEOVER_S, f"took {elapsed:.2f} s"
    set_plan(postgres_url, user, "marker-2")
    tabs.wait(rest, has_plan("marker-2"), 5)
    for page in rest:
        assert tabs.plans(page) == ["first", "marker-1", *committed, "marker-2"], page
        # The same relay instance replayed what was missed: nothing to refetch.
        assert tabs.eval(page, "window.tab.resyncs") == [], page
    settle_connections(tabs_relay, (1, 1))

    # The new leader is frozen (Page Lifecycle: `freeze`, then none of its JavaScript runs):
    # the other page takes over within 2 s; the frozen one follows when it runs again, and
    # an update reaches both once.
    frozen = took["page"]
    (other,) = [p for p in rest if p != frozen]
    frozen_at = time.monotonic()
    tabs.step(step="freeze", page=frozen)
    tabs.wait([other], LEADS, TAKEOVER_S)
    assert time.monotonic() - frozen_at <= TAKEOVER_S
    settle_connections(tabs_relay, (1, 1))
    tabs.step(step="resume", page=frozen)
    tabs.wait([frozen], "window.tab.client.role === 'follower'", 5)
    set_plan(postgres_url, user, "after-freeze")
    tabs.wait(rest, has_plan("after-freeze"), 5)
    for page in rest:
        assert tabs.plans(page).count("after-freeze") == 1, page
    settle_connections(tabs_relay, (1, 1))


@pytest.mark.timeout(150)
def test_users_never_share_and_a_user_switch_leaves_the_previous_users_socket(
        tabs: Tabs, tabs_relay: RelayProcess, postgres_url: str) -> None:
    ann, bob, cat = "tabs-ann", "tabs-bob", "tabs-cat"
    for user in (ann, bob, cat):
        add_row(postgres_url, user, "start")
    # Two users in two browser contexts (profiles), two tabs each.
    tabs.context("a")
    tabs.context("b")
    tabs.open("a", "a1", ann)
    tabs.open("a", "a2", ann)
    tabs.open("b", "b1", bob)
    tabs.open("b", "b2", bob)
    tabs.wait(["a1", "a2", "b1", "b2"], ALL_CONNECTED, 15)
    settle_connections(tabs_relay, (2, 2))
    set_plan(postgres_url, ann, "ann-1")
    set_plan(postgres_url, bob, "bob-1")
    tabs.wait(["a1", "a2"], has_plan("ann-1"), 5)
    tabs.wait(["b1", "b2"], has_plan("bob-1"), 5)
    for page in ("a1", "a2"):
        assert tabs.plans(page) == ["ann-1"], page
    for page in ("b1", "b2"):
        assert tabs.plans(page) == ["bob-1"], page

    # In context a, the tab that holds ann's connection signs in as cat: it leaves ann's
    # socket (the other ann tab takes it over) and gets cat's updates only.
    switcher = tabs.leader(["a1", "a2"])
    (stayer,) = [p for p in ("a1", "a2") if p != switcher]
    tabs.eval(switcher, f"window.tab.switchUser({json.dumps(cat)})")
    tabs.wait([stayer], LEADS, TAKEOVER_S)
    tabs.wait([switcher], ALL_CONNECTED, 10)
    settle_connections(tabs_relay, (3, 3))
    set_plan(postgres_url, ann, "ann-2")
    set_plan(postgres_url, cat, "cat-1")
    tabs.wait([stayer], has_plan("ann-2"), 5)
    tabs.wait([switcher], has_plan("cat-1"), 5)
    set_plan(postgres_url, ann, "ann-3")  # a marker after ann-2 on ann's stream
    tabs.wait([stayer], has_plan("ann-3"), 5)
    tabs.eval(switcher, "1")  # let pending BroadcastChannel messages run
    assert tabs.plans(stayer) == ["ann-1", "ann-2", "ann-3"]
    assert tabs.plans(switcher) == ["ann-1", "cat-1"]
    channels = tabs.eval(switcher, "Object.keys(window.tab.client.cursors)")
    assert f"user_Subscription_{cat}" in channels
    assert not any(ann in channel for channel in channels), channels
    for page in ("b1", "b2"):
        assert tabs.plans(page) == ["bob-1"], page


@pytest.mark.timeout(150)
def test_without_broadcast_channel_each_tab_has_its_own_socket(
        tabs: Tabs, tabs_relay: RelayProcess, postgres_url: str) -> None:
    user = "tabs-nobc"
    add_row(postgres_url, user, "start")
    pages = ["n1", "n2", "n3"]
    tabs.context("nobc", init=NO_BROADCAST_CHANNEL)
    for page in pages:
        tabs.open("nobc", page, user)
    tabs.wait(pages, ALL_CONNECTED, 15)
    settle_connections(tabs_relay, (3, 1))
    for page in pages:
        assert tabs.eval(page, "window.tab.client.role") == "single"
    set_plan(postgres_url, user, "own-1")
    set_plan(postgres_url, user, "own-2")
    tabs.wait(pages, has_plan("own-2"), 5)
    for page in pages:
        assert tabs.plans(page) == ["own-1", "own-2"], page


@pytest.mark.timeout(150)
def test_without_web_locks_tabs_elect_over_broadcast_channel(
        tabs: Tabs, tabs_relay: RelayProcess, postgres_url: str) -> None:
    user = "tabs-nolocks"
    add_row(postgres_url, user, "start")
    pages = ["l1", "l2", "l3"]
    tabs.context("nolocks", init=NO_WEB_LOCKS)
    for page in pages:
        tabs.open("nolocks", page, user)
    tabs.wait(pages, ALL_CONNECTED, 15)
    settle_connections(tabs_relay, (1, 1))
    set_plan(postgres_url, user, "elected-1")
    tabs.wait(pages, has_plan("elected-1"), 5)
    leader = tabs.leader(pages)
    rest = [p for p in pages if p != leader]
    closed_at = time.monotonic()
    tabs.close_page(leader)
    tabs.wait(rest, LEADS, TAKEOVER_S, any_page=True)
    assert time.monotonic() - closed_at <= TAKEOVER_S
    set_plan(postgres_url, user, "elected-2")
    tabs.wait(rest, has_plan("elected-2"), 5)
    for page in rest:
        assert tabs.plans(page) == ["elected-1", "elected-2"], page
    settle_connections(tabs_relay, (1, 1))


@pytest.mark.timeout(150)
def test_the_react_hook_in_two_tabs_reports_connected_and_its_own_subscribers(
        tabs: Tabs, tabs_relay: RelayProcess, postgres_url: str, tmp_path: Path) -> None:
    user = "tabs-hook"
    add_row(postgres_url, user, "start")
    bundle = tmp_path / "hook.js"
    subprocess.run([str(CLIENT / "node_modules" / ".bin" / "esbuild"),
                    "test-support/hook-page.jsx", "--bundle", "--format=esm",
                    f"--outfile={bundle}", "--define:process.env.NODE_ENV=\"production\"",
                    "--log-level=warning"], cwd=CLIENT, check=True, timeout=60)
    tabs.step(step="context", context="h")
    tabs.step(step="serve", context="h", url="**/demo/hook-test?*", contentType="text/html",
              body='<!doctype html><div id="root"></div>'
                   '<script type="module" src="/demo/hook-test.js"></script>')
    tabs.step(step="serve", context="h", url="**/demo/hook-test.js",
              contentType="text/javascript", body=bundle.read_text())
    pages = ["h1", "h2"]
    for page in pages:
        tabs.step(step="open", context="h", page=page,
                  url=f"{tabs_relay.http_url}/demo/hook-test?userId={user}")
    # Every tab: connected, and its own three components counted.
    tabs.wait(pages, "window.hookState && window.hookState.status.length === 3 && "
                     "window.hookState.status.every(s => s.isConnected && "
                     "s.subscriberCount === 3)", 15)
    settle_connections(tabs_relay, (1, 1))
    assert sorted(tabs.eval(p, "window.hookState.sockets") for p in pages) == [0, 1]
    set_plan(postgres_url, user, "hooked")
    tabs.wait(pages, "document.getElementById('w2').textContent.includes('hooked')", 5)
    set_plan(postgres_url, user, "hooked-2")
    tabs.wait(pages, "window.hookState.updates.every(n => n === 2)", 5)
    for page in pages:
        assert tabs.eval(page, "window.hookState.updates") == [2, 2, 2], page

