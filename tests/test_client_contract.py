"""The JS client's contract with the relay: the close-code table is generated from the Python
one, and a token signed by Node's real jsonwebtoken is accepted."""


from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import CLIENT, NODE, ROOT, SECRET, RelayProcess, needs_node


def test_js_close_codes_are_generated_from_the_python_table() -> None:
    generated = subprocess.run([sys.executable, "-m", "relay", "close-codes", "--js"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert (CLIENT / "src" / "closeCodes.js").read_text() == generated


@pytest.mark.slow
@needs_node
def test_token_signed_by_node_jsonwebtoken_is_accepted(relay: RelayProcess) -> None:
    token = subprocess.run(
        [NODE, "test-support/sign-token.mjs", "--user-id", "node-42", "--secret", SECRET],
        cwd=CLIENT, capture_output=True, text=True, check=True).stdout.strip()
    client = relay.connect(token=token)
    assert client.connected["userId"] == "node-42"
    client.close()
