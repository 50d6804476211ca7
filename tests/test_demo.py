"""The /demo page exists in development mode only (it can mint tokens for any user)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.support import RelayProcess

pytestmark = pytest.mark.slow  # every test here boots real processes


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_demo_is_404_in_production(relay: RelayProcess) -> None:
    assert _get(relay.http_url + "/demo")[0] == 404
    assert _get(relay.http_url + "/demo/token?userId=42")[0] == 404


def test_demo_page_and_token_in_development(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory({"RELAY_DEV": "1"})
    status, body = _get(relay.http_url + "/demo")
    assert status == 200
    assert b"relay live demo" in body
    status, body = _get(relay.http_url + "/demo/token?userId=7")
    assert status == 200
    client = relay.connect(token=json.loads(body)["token"])
    assert client.connected["userId"] == "7"
    client.close()
    assert _get(relay.http_url + "/demo/token?userId=a%20b")[0] == 400
