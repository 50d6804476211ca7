"""Unit tests of the messages relay sends to clients, byte for byte where the bytes matter
(docs/protocol.md is the contract; the fuzzing of the update encoder is in
test_fuzz_parsers.py)."""

from __future__ import annotations

import json

import pytest

from relay.protocol import encode_update


def test_update_splices_the_payload_in_after_the_envelope() -> None:
    message = encode_update("user_Subscription_42", ' {"plan": "pro"} ', "ab12-1", 17)
    assert message == (b'{"type":"update","table":"subscription","channel":"user_Subscription_42",'
                       b'"seq":17,"cursor":"ab12-1:17","data":{"plan": "pro"}}')


def test_update_table_comes_from_the_payload_when_it_names_one() -> None:
    message = json.loads(encode_update("user_Usage_7", '{"table": "Invoices"}', "s", 1))
    assert message["table"] == "Invoices"


@pytest.mark.parametrize("payload", ['{"table": ""}', '{"table": 5}', "[1, 2]", "3"])
def test_update_table_falls_back_to_the_channel(payload: str) -> None:
    assert json.loads(encode_update("user_Usage_7", payload, "s", 1))["table"] == "usage"


@pytest.mark.parametrize("payload", ["plain text", "NaN", "[Infinity]", "{'a': 1}", ""])
def test_update_data_is_the_raw_string_when_the_payload_is_not_strict_json(payload: str) -> None:
    message = json.loads(encode_update("user_Usage_7", payload, "s", 1))
    assert message["data"] == payload


def test_update_keeps_non_ascii_as_utf8() -> None:
    message = encode_update("user_Usage_7", '{"name": "Zoë"}', "s", 2)
    assert '"Zoë"'.encode() in message
    assert json.loads(message)["data"] == {"name": "Zoë"}
