"""Unit tests of the messages relay sends to clients, byte for byte where the bytes matter
(docs/protocol.md is the contract; the fuzzing of the update encoder is in
test_fuzz_parsers.py)."""

from __future__ import annotations

import json

import pytest

from relay import protocol
from relay.protocol import InvalidMessage, encode_update


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


@pytest.mark.parametrize(("payload", "stamp"), [
    ('{"table": "t", "ts": 1790000000.25}', 1790000000.25),  # orjson's parse
    ('{"ts": 12, "n": 1e999}', 12),  # the standard library's (orjson refuses 1e999)
    ('{"row": {"ts": 3}}', None),  # a row's column, not the commit time
    ("[1, 2]", None),
    ("plain text", None),
])
def test_update_stamped_gives_the_same_bytes_and_the_top_level_ts(payload: str,
                                                                  stamp: object) -> None:
    message, found = protocol.encode_update_stamped("user_Usage_7", payload, "s", 1)
    assert message == encode_update("user_Usage_7", payload, "s", 1)
    assert found == stamp and type(found) is type(stamp)


def test_update_keeps_non_ascii_as_utf8() -> None:
    message = encode_update("user_Usage_7", '{"name": "Zoë"}', "s", 2)
    assert '"Zoë"'.encode() in message
    assert json.loads(message)["data"] == {"name": "Zoë"}


# ----- the worker's messages -----


def test_connected_names_the_user_its_channels_and_where_each_stands() -> None:
    message = protocol.encode_connected("42", ("user_Subscription_42", "user_Usage_42"), "ab12",
                                        {"user_Usage_42": "ab12-1:3"}, 1700000000, 20.0, True)
    assert message == (b'{"type":"connected","userId":"42","channels":["user_Subscription_42",'
                       b'"user_Usage_42"],"epoch":"ab12","cursors":{"user_Usage_42":"ab12-1:3"},'
                       b'"expiresAt":1700000000,"pingInterval":20.0,"resumed":true}')


def test_resync_token_and_ping_messages() -> None:
    assert json.loads(protocol.encode_resync("database reconnected", ["c"], {"c": None})) == {
        "type": "resync", "reason": "database reconnected", "channels": ["c"],
        "cursors": {"c": None}}
    assert json.loads(protocol.encode_token_expiring(1700000000, 59)) == {
        "type": "token_expiring", "expiresAt": 1700000000, "in": 59}
    assert protocol.encode_token_refreshed(1700000060) == (
        b'{"type":"token_refreshed","expiresAt":1700000060}')
    assert protocol.ENCODED_PING == b'{"type":"ping"}'


# ----- what a client may send -----


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "message is not JSON"),
    ("[" * 5000 + "]" * 5000, "message is not JSON"),
    ("[1]", "message has no type"),
    ('{"type": 3}', "message has no type"),
])
def test_a_client_message_is_an_object_with_a_string_type(text: str, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=f"^{reason}$"):
        protocol.parse_client_message(text)
    assert protocol.parse_client_message('{"type": "pong"}') == {"type": "pong"}


CHANNELS = ("user_Subscription_7", "user_Usage_7")


def test_resume_keeps_the_clients_own_channels_and_ignores_others() -> None:
    resume = {"user_Usage_7": "s-1:4", "user_Usage_8": "s-1:9", "user_Subscription_7": None}
    assert protocol.resume_cursors(resume, CHANNELS) == {
        "user_Usage_7": "s-1:4", "user_Subscription_7": None}
    assert protocol.resume_cursors(None, CHANNELS) == {}


@pytest.mark.parametrize(("resume", "reason"), [
    (["user_Usage_7"], "not an object"),
    ({f"user_Usage_{i}": "s:1" for i in range(33)}, "too many entries"),
    ({"": "s:1"}, "a key is not a channel name"),
    ({"user_Usage_7": 5}, "a cursor is not a short string"),
    ({"user_Usage_7": "s:" + "1" * 200}, "a cursor is not a short string"),
])
def test_a_malformed_resume_is_refused_with_its_reason(resume: object, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=f"^invalid resume: {reason}$"):
        protocol.resume_cursors(resume, CHANNELS)


def test_a_resume_query_must_be_json() -> None:
    assert protocol.parse_resume_query('{"user_Usage_7": "s-1:4"}') == {"user_Usage_7": "s-1:4"}
    with pytest.raises(InvalidMessage, match="^invalid resume: not JSON$"):
        protocol.parse_resume_query("{" * 3000)
