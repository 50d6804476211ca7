"""Property-based tests of every parser relay owns: they either produce a result or raise
their own documented error, never anything else."""

from __future__ import annotations

import io
import json
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from relay import bus
from relay.history import History
from relay.listener import encode_update
from relay.websocket import ConnectionEnded, FrameReader, ProtocolViolation
from tests.support import RelayProcess, notify


@given(st.lists(st.binary(max_size=64), max_size=20))
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


def test_bus_round_trip_split_anywhere() -> None:
    data = bus.encode(bus.HELLO, {"pid": 1}) + bus.encode_update("user_Usage_1", b'{"a":1}')
    for cut in range(len(data) + 1):
        reader = bus.FrameReader()
        frames = list(reader.feed(data[:cut])) + list(reader.feed(data[cut:]))
        assert frames == [(bus.HELLO, b'{"pid":1}'), (bus.UPDATE, b"\x0cuser_Usage_1{\"a\":1}")]


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_websocket_frame_reader_never_fails_otherwise(data: bytes) -> None:
    reader = FrameReader(io.BytesIO(data).read, max_message_bytes=100)
    try:
        for _ in range(20):
            event = reader.next_event()
            assert event.kind in ("text", "ping", "pong", "close")
    except (ProtocolViolation, ConnectionEnded):
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=20)


@given(st.one_of(st.text(max_size=300), json_values.map(json.dumps)))
@settings(max_examples=300)
def test_encode_update_always_gives_browser_valid_json(payload: str) -> None:
    message = encode_update("user_Usage_7", payload, "s-1", 3)

    def refuse(name: str) -> float:
        raise ValueError(name)

    decoded = json.loads(message, parse_constant=refuse)  # no NaN/Infinity for browsers
    assert decoded["type"] == "update" and decoded["seq"] == 3
    assert decoded["channel"] == "user_Usage_7" and decoded["cursor"] == "s-1:3"


def test_encode_update_edge_payloads() -> None:
    for payload in ("NaN", "[Infinity]", "[" * 100000 + "]" * 100000, '"\\ud800"',
                    '{"table": 5}', "x" * 8000, '{"bad": "\\x"}'):
        decoded = json.loads(encode_update("user_Subscription_1", payload, "s", 1))
        assert decoded["table"] == "subscription"


@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.integers())))
def test_history_replay_never_fails_on_any_cursor(cursor: object) -> None:
    history = History("e", 10, 60, 1 << 20)
    history.open("c")
    for _ in range(3):
        _, seq = history.next_seq("c")
        history.record("c", seq, b"m")
    outcome = history.replay("c", cursor)
    assert outcome.resync or len(outcome.messages) <= 3


def test_garbage_on_the_listener_socket_does_not_hurt_it(relay: RelayProcess,
                                                         postgres_url: str) -> None:
    client = relay.connect("fuzz-bystander")
    listener_before = relay.listener_pids()
    garbage = [b"\x00" * 64, struct.pack("!IB", 2**31, ord("A")), struct.pack("!IB", 5, 0x7F),
               bus.encode(bus.ATTACH, {"req": "x", "user": 5}),
               struct.pack("!IB", 3, bus.HELLO) + b"[]",
               bus.encode(bus.HELLO, {"pid": "not a number"}),
               bus.encode(bus.DETACH, {"user": "nobody", "channels": "not a list"}),
               struct.pack("!IB", 20, bus.DETACH) + b"{not json", b"\xff" * 1000]
    for data in garbage:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(relay.socket_path)
            sock.sendall(data)
    assert relay.listener_pids() == listener_before
    notify(postgres_url, "user_Usage_fuzz-bystander", '{"ok": 1}')
    assert client.expect("update")["data"] == {"ok": 1}
    assert relay.health()[0] == 200
    client.close()
