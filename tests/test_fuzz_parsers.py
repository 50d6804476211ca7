"""Property-based tests of every parser relay owns: each produces its result or raises its
own documented error, never anything else. Client JSON messages (connection-level parsing,
tokens, resume cursors), the listener↔worker wire format, NOTIFY payloads and WebSocket
frames; plus two live checks, one against a worker and one against the listener's socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay import bus
from relay.auth import AuthError, verify_token
from relay.listener.history import History
from relay.protocol import InvalidMessage, encode_update, parse_client_message
from relay.worker.websocket import ConnectionEnded, FrameReader, ProtocolViolation
from tests.conformance.wire import frame
from tests.support import SECRET, Client, RelayProcess, notify

KEY = SECRET.encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=20)


def _chunked(data: bytes, sizes: list[int]) -> Callable[[int], bytes]:
    """``read(n)`` over ``data`` that returns at most the next of ``sizes`` bytes a call,
    as a socket does; b"" at the end."""
    stream = io.BytesIO(data)
    cuts = iter(sizes)

    def read(n: int) -> bytes:
        return stream.read(min(n, next(cuts, n) or 1))
    return read


# ----- client messages -----

@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps),
                 st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(0, 5000))))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_client_message_parses_to_a_typed_object_or_is_1008(text: str) -> None:
    try:
        message = parse_client_message(text)
    except InvalidMessage as exc:  # the connection closes 1008 with this reason
        assert str(exc) in ("message is not JSON", "message has no type")
        return
    assert isinstance(message, dict) and isinstance(message["type"], str)


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(
    lambda b: b.decode("latin-1")), json_values))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_any_token_value_is_claims_or_auth_error(token: object) -> None:
    try:
        verify_token(token, KEY)
    except AuthError:
        pass


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku", "x"]),
                              json_values, max_size=4),
       claims=st.dictionaries(st.sampled_from(["userId", "exp", "iat", "nbf", "iss", "aud",
                                               "sub", "jti", "x"]), json_values, max_size=7))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_genuinely_signed_tokens_of_any_shape_are_claims_or_auth_error(
        header: dict[str, object], claims: dict[str, object]) -> None:
    """Signed with the right secret, so only relay's own claim checks stand in the way."""
    def b64(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing = f"{b64({'alg': 'HS256', **header})}.{b64(claims)}"
    signature = base64.urlsafe_b64encode(
        hmac.new(KEY, signing.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    try:
        result = verify_token(f"{signing}.{signature}", KEY)
    except AuthError:
        return
    assert isinstance(result.user_id, str) and result.user_id
    assert isinstance(result.expires_at, int) and result.expires_at > time.time()


cursors = st.one_of(
    json_values,
    st.builds(lambda stream, seq: f"{stream}:{seq}", st.sampled_from(["e-1", "e-2", "x", ""]),
              st.one_of(st.integers(-5, 10**30).map(str), st.text(max_size=8))),
)


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(cursors)
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_history_replay_never_fails_on_any_cursor(cursor: object) -> None:
    history = History("e", 10, 60, 1 << 20)
    stream = history.open("c")
    for _ in range(3):
        _, seq = history.next_seq("c")
        history.record("c", seq, b"m")
    outcome = history.replay("c", cursor)
    assert outcome.resync or len(outcome.messages) <= 3
    if isinstance(cursor, str) and cursor.startswith(stream.stream + ":") and not outcome.resync:
        assert len(outcome.messages) == 3 - int(cursor.rpartition(":")[2])


# ----- the listener↔worker wire format -----

@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(deadline=None)
def test_bus_frame_reader_only_yields_frames_or_raises_its_error(chunks: list[bytes]) -> None:
    reader = bus.FrameReader(max_frame=1024)
    try:
        for chunk in chunks:
            for kind, body in reader.feed(chunk):
                assert kind in bus.KINDS
                assert isinstance(body, bytes)
    except bus.BusProtocolError:
        pass


@given(st.binary(max_size=300))
@settings(deadline=None)
def test_bus_bodies_decode_or_raise(body: bytes) -> None:
    try:
        assert isinstance(bus.decode_json(body), dict)
    except bus.BusProtocolError:
        pass
    try:
        channel, message = bus.decode_update(body)
        assert isinstance(channel, str) and isinstance(message, bytes)
    except bus.BusProtocolError:
        pass


@given(st.lists(st.tuples(st.sampled_from(sorted(bus.KINDS)),
                          st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
                min_size=1, max_size=5), st.data())
@settings(deadline=None)
def test_bus_frames_truncated_anywhere_wait_for_the_rest(
        frames: list[tuple[int, dict[str, object]]], data: st.DataObject) -> None:
    wire = b"".join(bus.encode(kind, body) for kind, body in frames)
    cut = data.draw(st.integers(0, len(wire) - 1))
    reader = bus.FrameReader()
    early = list(reader.feed(wire[:cut]))  # whole frames before the cut, and no error
    rest = list(reader.feed(wire[cut:]))
    assert [kind for kind, _ in early + rest] == [kind for kind, _ in frames]


def test_bus_round_trip_split_anywhere() -> None:
    data = bus.encode(bus.HELLO, {"pid": 1}) + bus.encode_update("user_Usage_1", b'{"a":1}')
    for cut in range(len(data) + 1):
        reader = bus.FrameReader()
        frames = list(reader.feed(data[:cut])) + list(reader.feed(data[cut:]))
        assert frames == [(bus.HELLO, b'{"pid":1}'),
                          (bus.UPDATE, b"\x0cuser_Usage_1\x81\x07{\"a\":1}")]
        seen: list[object] = []
        reader = bus.FrameReader()
        for part in (data[:cut], data[cut:]):
            reader.dispatch(part, lambda *update, seen=seen: seen.append(update),
                            lambda *frame, seen=seen: seen.append(frame))
        assert seen == [(bus.HELLO, b'{"pid":1}'), ("user_Usage_1", b"\x81\x07{\"a\":1}")]


@given(st.binary(max_size=300), st.integers(1, 300))
@settings(deadline=None)
def test_bus_dispatch_of_any_bytes_hands_on_frames_or_raises(wire: bytes, chunk: int) -> None:
    reader = bus.FrameReader()
    try:
        for i in range(0, len(wire), chunk):
            reader.dispatch(wire[i:i + chunk], lambda channel, frame: None,
                            lambda kind, body: None)
    except bus.BusProtocolError:
        pass


def test_bus_oversized_and_unknown_frames_are_refused_from_the_header() -> None:
    for header in (struct.pack("!IB", 2**31, bus.UPDATE), struct.pack("!IB", 0, bus.HELLO),
                   struct.pack("!IB", 5, 0x7F)):
        reader = bus.FrameReader(max_frame=1024)
        try:
            list(reader.feed(header))
        except bus.BusProtocolError:
            continue
        raise AssertionError(f"{header!r} was not refused")


# ----- NOTIFY payloads -----

def _refuse_constant(name: str) -> float:
    raise ValueError(name)


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(st.one_of(st.text(max_size=300), json_values.map(json.dumps),
                 st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(0, 3000))))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_encode_update_always_gives_browser_valid_json(payload: str) -> None:
    message = encode_update("user_Usage_7", payload, "s-1", 3)
    # Strict JSON as a browser's JSON.parse takes it: no NaN/Infinity, valid UTF-8.
    decoded = json.loads(message.decode("utf-8"), parse_constant=_refuse_constant)
    assert decoded["type"] == "update" and decoded["seq"] == 3
    assert decoded["channel"] == "user_Usage_7" and decoded["cursor"] == "s-1:3"
    assert isinstance(decoded["table"], str) and decoded["table"]


def test_encode_update_edge_payloads() -> None:
    for payload in ("NaN", "[Infinity]", "-Infinity", "[" * 100000 + "]" * 100000, '"\\ud800"',
                    '{"table": 5}', "x" * 8000, '{"bad": "\\x"}', '{"a": 1e999}', "",
                    '{"a":1} trailing', "\x00", '"\\u0000"', '{"table": ""}', " 1 "):
        decoded = json.loads(encode_update("user_Subscription_1", payload, "s", 1).decode(),
                             parse_constant=_refuse_constant)
        assert decoded["table"] == "subscription", payload[:20]


# ----- WebSocket frames -----

@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(st.binary(max_size=200), st.lists(st.integers(1, 16), max_size=50))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_websocket_frame_reader_never_fails_otherwise(data: bytes, sizes: list[int]) -> None:
    reader = FrameReader(_chunked(data, sizes), max_message_bytes=100)
    try:
        for _ in range(20):
            event = reader.next_event()
            assert event.kind in ("text", "ping", "pong", "close")
    except (ProtocolViolation, ConnectionEnded):
        pass


messages = st.lists(st.tuples(st.text(max_size=40), st.integers(1, 4),
                              st.sampled_from(["", "ping", "pong", "empty"])),
                    min_size=1, max_size=6)


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@given(messages, st.lists(st.integers(1, 9), max_size=200))
@settings(max_examples=300, deadline=None)  # a busy machine is slow, not wrong
def test_websocket_frame_reader_reads_what_a_client_sent(
        sent: list[tuple[str, int, str]], sizes: list[int]) -> None:
    """Any split into fragments, control frames and empty fragments between them, and reads
    that return any number of bytes: the same messages come out, every frame is counted."""
    wire = b""
    expected: list[tuple[str, str]] = []
    frames = 0
    for text, parts, between in sent:
        data = text.encode()
        step = max(1, -(-len(data) // parts))
        pieces = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for i, piece in enumerate(pieces):
            if i and between:
                wire += {"ping": frame(0x9, b"p"), "pong": frame(0xA, b"q"),
                         "empty": frame(0x0, b"", fin=False)}[between]
                frames += 1
                if between == "ping":
                    expected.append(("ping", "p"))
            wire += frame(0x1 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1)
            frames += 1
        expected.append(("text", text))
    counted = []
    reader = FrameReader(_chunked(wire, sizes), 1 << 16, on_frame=lambda: counted.append(1))
    got: list[tuple[str, str]] = []
    try:
        while True:
            event = reader.next_event()
            if event.kind != "pong":
                got.append((event.kind, event.text if event.kind == "text"
                            else event.payload.decode()))
    except ConnectionEnded:
        pass
    assert got == expected
    assert len(counted) == frames


def _header_only(header: bytes) -> Callable[[int], bytes]:
    stream = io.BytesIO(header)

    def read(n: int) -> bytes:
        chunk = stream.read(n)
        assert chunk, "the reader asked for the payload"
        return chunk
    return read


def test_websocket_frame_reader_refuses_before_reading_the_payload() -> None:
    for header, code in ((bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 40), 1009),
                         (bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 40), 1003)):
        try:
            FrameReader(_header_only(header + os.urandom(4)), 16384).next_event()
        except ProtocolViolation as exc:
            assert exc.code.code == code
        else:
            raise AssertionError("not refused")


# ----- live: a worker and the listener -----

@pytest.mark.slow
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.sampled_from(["auth", "refresh", "pong", "AUTH", ""]),
     "token": json_values, "resume": json_values})))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_first_message_is_refused_with_a_client_code(relay: RelayProcess,
                                                         message: object) -> None:
    """Never an internal error (1011): whatever a client says first is its own mistake."""
    client = relay.connect(authenticate=False, expect_connected=False)
    try:
        client.send(json.dumps(message))
        code, _ = client.expect_close()
    finally:
        client.close()
    assert code in (1008, 4001, 4003), code


@pytest.mark.slow
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.sampled_from(["refresh", "pong", "auth", "resume"]), "token": json_values})))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_message_after_auth_is_answered_or_refused_with_a_client_code(
        relay: RelayProcess, message: object) -> None:
    client = relay.connect("fuzz-live")
    try:
        client.send(json.dumps(message))
        client.send({"type": "refresh", "token": relay.token("fuzz-live")})
        reply = client.recv(10)
        if reply is not None:  # the message was accepted (a pong): the refresh is answered
            assert reply["type"] == "token_refreshed"
        else:
            assert client.close_code in (1008, 4001, 4003), client.close_code
    finally:
        client.close()


@pytest.mark.slow
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=100)))
@example("[" * 2000)  # deeper than json's recursion limit, short enough for a request line
@example("NaN")
@example('{"user_Usage_fuzz-resume": {"deep": [1e999]}}')
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_resume_in_the_query_connects_or_is_refused_with_1008(relay: RelayProcess,
                                                                  resume: str) -> None:
    """``?resume=``: a well-formed map connects; garbage (even nesting deeper than the JSON
    parser's recursion limit) is a 1008 whose reason says the resume is invalid — never a
    1011, never another code (docs/protocol.md)."""
    url = f"{relay.ws_url}?token={relay.token('fuzz-resume')}&resume={urllib.parse.quote(resume)}"
    if len(url) > 8000:
        return
    client = Client(url, None)
    try:
        message = client.recv(10)
        if message is None:
            assert client.close_code == 1008, (client.close_code, client.close_reason)
            assert client.close_reason.startswith("invalid resume:"), client.close_reason
        else:
            assert message["type"] == "connected" and message["userId"] == "fuzz-resume"
    finally:
        client.close()


@pytest.mark.slow
def test_garbage_on_the_listener_socket_does_not_hurt_it(relay: RelayProcess,
                                                         postgres_url: str) -> None:
    client = relay.connect("fuzz-bystander")
    listener_before = relay.listener_pids()
    garbage = [b"\x00" * 64, struct.pack("!IB", 2**31, ord("A")), struct.pack("!IB", 5, 0x7F),
               bus.encode(bus.ATTACH, {"req": "x", "user": 5}),
               struct.pack("!IB", 3, bus.HELLO) + b"[]",
               bus.encode(bus.HELLO, {"pid": "not a number"}),
               bus.encode(bus.HELLO, {"pid": [1]}),
               struct.pack("!IB", 13, bus.HELLO) + b'{"pid":1e999}',  # int(inf)
               bus.encode(bus.DETACH, {"user": "nobody", "channels": "not a list"}),
               bus.encode(bus.STATS, {"req": {"deep": [1, 2]}}),
               bus.encode(bus.UPDATE, {"not": "for the listener"}),
               struct.pack("!IB", 20, bus.DETACH) + b"{not json",
               struct.pack("!IB", 2001, bus.ATTACH) + b"[" * 2000,
               b"\xff" * 1000, os.urandom(4096)]
    # Well-formed attaches whose channels PostgreSQL cannot LISTEN to as written: the empty
    # one made every LISTEN a syntax error and the database link reconnect for ever.
    for channel in ("", "a\x00b", "x" * 64, "é" * 32):
        garbage.append(bus.encode(bus.ATTACH, {"req": "x", "user": "evil", "channels": [channel]}))
    lone_surrogate = b'{"req":"x","user":"evil","channels":["\\ud800"]}'
    garbage.append(struct.pack("!IB", len(lone_surrogate), bus.ATTACH) + lone_surrogate)
    reconnects = relay.health()[1]["listener"]["databaseReconnects"]
    for data in garbage:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(relay.socket_path)
            sock.sendall(data)
    # A user connecting afterwards needs a LISTEN round trip after all of the garbage.
    late = relay.connect("fuzz-late")
    for user, c in (("fuzz-bystander", client), ("fuzz-late", late)):
        notify(postgres_url, f"user_Usage_{user}", '{"ok": 1}')
        assert c.expect("update")["data"] == {"ok": 1}
    late.close()
    assert relay.listener_pids() == listener_before
    status, health = relay.health()
    assert status == 200
    assert health["listener"]["databaseReconnects"] == reconnects
    assert "Traceback" not in relay.logs()
    client.close()
