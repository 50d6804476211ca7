"""RFC 6455 conformance of relay's frame handling, after the Autobahn|Testsuite categories
that apply to a server. Raw sockets on the client side. For every case: what arrives on the
wire (a close code, a pong, a relay answer, or a connection that still answers a ping), and
a bystander that keeps receiving updates. The results table is written to
docs/conformance.md when the module's relay stops, after a complete run only.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from relay.auth import issue_token
from relay.closecodes import BY_CODE
from tests.conformance.wire import RawClient, frame, header_only
from tests.support import ROOT, SECRET, Client, RelayProcess, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
LIMIT = 131072  # RELAY_MAX_MESSAGE_BYTES of the relay under test (default 16384)


def user_for(category: str) -> str:
    return "raw-" + category.replace("/", "-")


def padded(message: bytes, size: int) -> bytes:
    """A JSON object padded with JSON whitespace before its last brace to exactly ``size``."""
    assert len(message) <= size
    return message[:-1] + b" " * (size - len(message)) + b"}"


def pong_message(size: int) -> bytes:
    """A valid relay message that needs no answer (`pong`), of exactly ``size`` bytes."""
    return padded(b'{"type":"pong"}', size)


def refresh_message(category: str, size: int = 0) -> bytes:
    """A valid relay message that relay answers (`refresh` → `token_refreshed`): proof that
    the whole message was read and parsed."""
    token = issue_token(user_for(category), SECRET.encode())
    message = json.dumps({"type": "refresh", "token": token}).encode()
    return padded(message, size) if size else message


def split(data: bytes, parts: int) -> list[bytes]:
    step = -(-len(data) // parts)
    return [data[i:i + step] for i in range(0, len(data), step)]


def fragmented(data: bytes, parts: int, between: bytes = b"") -> tuple[bytes, ...]:
    """``data`` as a text message of ``parts`` fragments, ``between`` sent between them."""
    pieces = split(data, parts)
    frames: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i and between:
            frames.append(between)
        frames.append(frame(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1))
    return tuple(frames)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    frames: tuple[bytes, ...]
    # A close code; "pong:<hex>" (a pong with that payload); "refreshed" (relay answered the
    # refresh message, so it read all of it); "alive" (it still answers a ping afterwards).
    expect: int | str


def _framing() -> list[Case]:
    c = "framing"
    return [
        # The frame is accepted; an empty message is not JSON, which relay refuses by policy.
        Case("1.1 text of 0 bytes (7-bit): accepted, not JSON", c, (frame(TEXT, b""),), 1008),
        Case("1.2 text of 125 bytes (7-bit)", c, (frame(TEXT, pong_message(125)),), "alive"),
        Case("1.3 text of 126 bytes (16-bit)", c, (frame(TEXT, pong_message(126)),), "alive"),
        Case("1.4 text of 65535 bytes (16-bit)", c,
             (frame(TEXT, refresh_message(c, 65535)),), "refreshed"),
        Case("1.5 text of 65536 bytes (64-bit)", c,
             (frame(TEXT, refresh_message(c, 65536)),), "refreshed"),
        Case("1.6 text of 100 bytes in the 16-bit encoding", c,
             (frame(TEXT, pong_message(100), length_form="16"),), "alive"),
        Case("1.7 text of 300 bytes in the 64-bit encoding", c,
             (frame(TEXT, refresh_message(c, 300), length_form="64"),), "refreshed"),
        Case("1.8 empty first fragment, then the message", c,
             (frame(TEXT, b"", fin=False), frame(CONT, refresh_message(c))), "refreshed"),
        Case("1.9 the message, then an empty final fragment", c,
             (frame(TEXT, refresh_message(c), fin=False), frame(CONT, b"")), "refreshed"),
    ]


def _ping_pong() -> list[Case]:
    c = "ping/pong"
    return [
        Case("2.1 ping, empty payload", c, (frame(PING, b""),), "pong:"),
        Case("2.2 ping payload echoed (binary bytes)", c, (frame(PING, b"hello\x00\xff"),),
             "pong:" + b"hello\x00\xff".hex()),
        Case("2.3 ping of 125 bytes", c, (frame(PING, b"p" * 125),),
             "pong:" + (b"p" * 125).hex()),
        Case("2.4 ping of 126 bytes", c, (frame(PING, b"p" * 126),), 1002),
        Case("2.5 ping in the 16-bit length encoding", c,
             (frame(PING, b"p", length_form="16"),), 1002),
        Case("2.6 unsolicited pong ignored", c, (frame(PONG, b"x"),), "alive"),
        Case("2.7 unsolicited pong of 125 bytes ignored", c, (frame(PONG, b"x" * 125),),
             "alive"),
    ]


def _reserved() -> list[Case]:
    cases = [Case(f"3.{rsv} reserved bits {rsv:03b}", "reserved",
                  (frame(TEXT, b'{"type":"pong"}', rsv=rsv),), 1002) for rsv in range(1, 8)]
    cases.append(Case("3.8 reserved bit on a ping", "reserved", (frame(PING, b"", rsv=4),),
                      1002))
    cases += [Case(f"4.{opcode} reserved opcode {opcode}", "reserved", (frame(opcode, b""),),
                   1002) for opcode in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)]
    return cases


def _fragmentation() -> list[Case]:
    c = "fragmentation"
    start = frame(TEXT, b'{"type"', fin=False)
    return [
        Case("5.1 fragmented ping", c, (frame(PING, b"a", fin=False),), 1002),
        Case("5.2 fragmented pong", c, (frame(PONG, b"a", fin=False),), 1002),
        Case("5.3 fragmented close", c, (frame(CLOSE, close_payload(1000), fin=False),), 1002),
        Case("5.4 continuation without a start (final)", c, (frame(CONT, b"x"),), 1002),
        Case("5.5 continuation without a start (not final)", c,
             (frame(CONT, b"x", fin=False),), 1002),
        Case("5.6 text in 3 fragments", c, fragmented(refresh_message(c), 3), "refreshed"),
        Case("5.7 text in 1-byte fragments", c, fragmented(b'{"type":"pong"}', 15), "alive"),
        Case("5.8 ping between fragments", c,
             (start, frame(PING, b"mid"), frame(CONT, b':"pong"}')), "pong:" + b"mid".hex()),
        Case("5.9 pong between fragments", c,
             fragmented(refresh_message(c), 3, frame(PONG, b"x")), "refreshed"),
        Case("5.10 close between fragments", c, (start, frame(CLOSE, close_payload(1000))),
             1000),
        Case("5.11 empty continuations between fragments", c,
             fragmented(refresh_message(c), 2, frame(CONT, b"", fin=False)), "refreshed"),
        Case("5.12 new text inside a fragmented one", c, (start, frame(TEXT, b"{}")), 1002),
        Case("5.13 binary inside a fragmented text", c, (start, frame(BINARY, b"{}")), 1002),
    ]


def _utf8() -> list[Case]:
    c = "utf-8"
    return [
        Case("6.1 invalid UTF-8 text", c, (frame(TEXT, b'{"type":"\xff"}'),), 1007),
        Case("6.2 invalid sequence split across fragments", c,
             (frame(TEXT, b'{"type":"pong","x":"\xce', fin=False), frame(CONT, b'\xff"}')), 1007),
        Case("6.3 valid 2-byte character split across fragments", c,
             (frame(TEXT, b'{"type":"pong","x":"\xce', fin=False), frame(CONT, b'\xba"}')),
             "alive"),
        Case("6.4 valid 4-byte character split over 3 fragments", c,
             (frame(TEXT, b'{"type":"pong","x":"\xf0\x9f', fin=False),
              frame(CONT, b"\x98", fin=False), frame(CONT, b'\x80"}')), "alive"),
        Case("6.5 valid UTF-8 of every length", c,
             (frame(TEXT, '{"type":"pong","x":"aκόσμε€😀"}'.encode()),), "alive"),
        Case("6.6 overlong encoding", c, (frame(TEXT, b'{"x":"\xc0\xaf"}'),), 1007),
        Case("6.7 surrogate half", c, (frame(TEXT, b'{"x":"\xed\xa0\x80"}'),), 1007),
        Case("6.8 code point above U+10FFFF", c, (frame(TEXT, b'{"x":"\xf4\x90\x80\x80"}'),),
             1007),
        Case("6.9 message ends inside a character", c,
             (frame(TEXT, b'{"type":"pong","x":"\xe2\x82'),), 1007),
        Case("6.10 invalid first fragment refused before the rest (fail fast)", c,
             (frame(TEXT, b'{"x":"\xff', fin=False),), 1007),
    ]


def _close() -> list[Case]:
    c = "close"
    cases = [
        Case("7.1 close without payload", c, (frame(CLOSE, b""),), 1000),
        Case("7.2 close payload of 1 byte", c, (frame(CLOSE, b"\x03"),), 1002),
        Case("7.3 close reason of 123 bytes", c,
             (frame(CLOSE, close_payload(1000, b"r" * 123)),), 1000),
        Case("7.4 close reason over 123 bytes", c,
             (frame(CLOSE, close_payload(1000, b"r" * 124)),), 1002),
        Case("7.5 close reason in valid UTF-8", c,
             (frame(CLOSE, close_payload(1000, "κόσμε".encode())),), 1000),
        Case("7.6 close reason invalid UTF-8", c, (frame(CLOSE, close_payload(1000, b"\xff")),),
             1007),
        Case("7.7 frames after the close are ignored", c,
             (frame(CLOSE, close_payload(1000)), frame(TEXT, b"\xff"), frame(3, b"")), 1000),
    ]
    cases += [Case(f"7.8 close {code} echoed", c, (frame(CLOSE, close_payload(code)),), code)
              for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                           1014, 3000, 3999, 4000, 4999)]
    cases += [Case(f"7.9 invalid close code {code}", c, (frame(CLOSE, close_payload(code)),),
                   1002)
              for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)]
    return cases


def _masking() -> list[Case]:
    c = "masking"
    return [
        Case("8.1 unmasked text", c, (frame(TEXT, b'{"type":"pong"}', mask=False),), 1002),
        Case("8.2 unmasked ping", c, (frame(PING, b"", mask=False),), 1002),
        Case("8.3 unmasked close", c, (frame(CLOSE, close_payload(1000), mask=False),), 1002),
        Case("8.4 unmasked continuation", c,
             (frame(TEXT, b'{"type"', fin=False), frame(CONT, b':"pong"}', mask=False)), 1002),
    ]


def _data_and_limits() -> list[Case]:
    return [
        Case("9.1 binary frame", "data", (frame(BINARY, b"\x00\x01"),), 1003),
        Case("9.2 empty binary frame", "data", (frame(BINARY, b""),), 1003),
        Case("9.3 binary header claiming 2^40 bytes", "data", (header_only(BINARY, 1 << 40),),
             1003),
        Case("10.1 text header claiming 2^40 bytes", "limits", (header_only(TEXT, 1 << 40),),
             1009),
        Case("10.2 fragments adding up to over the limit", "limits",
             (frame(TEXT, b" " * 100000, fin=False), header_only(CONT, 40000)), 1009),
        Case("10.3 64-bit length with the top bit set", "limits", (header_only(TEXT, 1 << 63),),
             1002),
        Case(f"10.4 message of exactly the limit ({LIMIT} bytes)", "limits",
             (frame(TEXT, refresh_message("limits", LIMIT)),), "refreshed"),
        Case("10.5 message one byte over the limit, sent whole", "limits",
             (frame(TEXT, pong_message(LIMIT + 1)),), 1009),
    ]


CASES = (_framing() + _ping_pong() + _reserved() + _fragmentation() + _utf8() + _close()
         + _masking() + _data_and_limits())
RESULTS: list[tuple[Case, str]] = []


@pytest.fixture(scope="module")
def conformance_relay(postgres_url: str, schema_installed: list[str],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("conformance"),
                         env={"RELAY_MAX_MESSAGE_BYTES": str(LIMIT),
                              "RELAY_CLIENT_MSG_RATE": "1000"})
    relay.start()
    yield relay
    relay.shut_down()
    _write_table()


@pytest.fixture(scope="module")
def bystander(conformance_relay: RelayProcess) -> Iterator[Client]:
    client = conformance_relay.connect("bystander")
    yield client
    client.close()


def _observe(client: RawClient, expect: int | str) -> str:
    if isinstance(expect, int):
        code = client.close_code()
        return "EOF" if code is None else str(code)
    if expect.startswith("pong:"):
        payload = client.read_until(PONG)
        return "no pong" if payload is None else "pong:" + payload.hex()
    if expect == "refreshed":
        while True:
            text = client.read_until(TEXT)
            if text is None:
                return "no answer"
            if json.loads(text).get("type") == "token_refreshed":
                return "refreshed"
    # "alive": the connection still answers a ping after the frames.
    client.send(frame(PING, b"still"))
    payload = client.read_until(PONG)
    return "alive" if payload == b"still" else "dead"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_frame_case(case: Case, conformance_relay: RelayProcess, bystander: Client,
                    postgres_url: str) -> None:
    token = conformance_relay.token(user_for(case.category))
    client = RawClient(conformance_relay.port, f"/ws?token={token}")
    try:
        assert json.loads(client.read_until(TEXT) or b"{}").get("type") == "connected"
        try:
            for data in case.frames:
                client.send(data)
        except OSError:
            pass  # relay may close (and reset) before all of a refused message is sent
        observed = _observe(client, case.expect)
    finally:
        client.close()
    RESULTS.append((case, observed))
    assert observed == str(case.expect), f"{case.id}: expected {case.expect}, got {observed}"
    notify(postgres_url, "user_Usage_bystander", json.dumps({"after": case.id}))
    assert bystander.expect("update")["data"] == {"after": case.id}


def test_auth_frame_in_the_same_write_as_the_handshake(conformance_relay: RelayProcess) -> None:
    """Bytes the handshake's reader buffered ahead are handed to the frame reader."""
    auth = json.dumps({"type": "auth", "token": conformance_relay.token("pipelined")}).encode()
    client = RawClient(conformance_relay.port, "/ws", pipelined=frame(TEXT, auth))
    try:
        assert json.loads(client.read_until(TEXT) or b"{}").get("type") == "connected"
    finally:
        client.close()


def test_reset_in_the_middle_of_a_frame_is_not_an_error(conformance_relay: RelayProcess,
                                                        bystander: Client,
                                                        postgres_url: str) -> None:
    client = RawClient(conformance_relay.port,
                       f"/ws?token={conformance_relay.token('raw-reset')}")
    assert json.loads(client.read_until(TEXT) or b"{}").get("type") == "connected"
    client.send(frame(TEXT, pong_message(5000))[:2000])  # header and part of the payload
    wait_for(lambda: conformance_relay.health()[1]["totalConnections"] == 2, 10)
    client.reset()
    wait_for(lambda: conformance_relay.health()[1]["totalConnections"] == 1, 10,
             message="the reset connection to be gone")
    logs = conformance_relay.logs()
    assert "Traceback" not in logs and "connection of user" not in logs
    notify(postgres_url, "user_Usage_bystander", '{"after": "reset"}')
    assert bystander.expect("update")["data"] == {"after": "reset"}


def _write_table() -> None:
    if {case.id for case, _ in RESULTS} != {case.id for case in CASES}:
        return  # a partial run (-k, -x) must not overwrite the full table
    observed_by_id = {case.id: observed for case, observed in RESULTS}
    by_category = Counter(case.category for case in CASES)
    passed = sum(1 for case in CASES if observed_by_id[case.id] == str(case.expect))
    lines = [
        "# WebSocket conformance",
        "",
        "Generated by `tests/conformance/test_frames.py` (do not edit; run",
        "`pytest tests/conformance` to regenerate). Raw sockets, a real relay with",
        f"`RELAY_MAX_MESSAGE_BYTES={LIMIT}` and `RELAY_CLIENT_MSG_RATE=1000`. After every case",
        "a bystander client must still receive an update.",
        "",
        "Expected: a close code as it arrives on the wire; `pong:<hex>` = a pong with that",
        "payload; `refreshed` = relay answered the `refresh` message the frames carried, so",
        "it read and parsed all of it; `alive` = the connection still answers a ping.",
        "",
        f"**{passed} of {len(RESULTS)} cases as expected** — "
        + ", ".join(f"{name} {count}" for name, count in by_category.items()) + ".",
        "",
        "| case | category | expected | observed |",
        "|---|---|---|---|",
    ]
    for case in CASES:  # in the suite's order, whatever order the cases ran in
        expected, observed = str(case.expect), observed_by_id[case.id]
        lines.append(f"| {case.id} | {case.category} | {_cell(expected)} | {_cell(observed)} |")
    lines.append("")
    (ROOT / "docs" / "conformance.md").write_text("\n".join(lines))


def _cell(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def test_client_close_codes_do_not_mint_metric_series(conformance_relay: RelayProcess) -> None:
    """Each is echoed on the wire, but counted as one label value, "other"."""
    for code in range(3100, 3120):
        client = RawClient(conformance_relay.port,
                           f"/ws?token={conformance_relay.token('raw-codes')}")
        client.read_until(TEXT)
        client.send(frame(CLOSE, close_payload(code)))
        assert client.close_code() == code
        client.close()

    def metric_codes() -> set[str]:
        with urllib.request.urlopen(conformance_relay.http_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return set(re.findall(r'relay_closes_total\{code="([^"]+)"\}', text))
    codes = wait_for(lambda: "other" in metric_codes() and metric_codes(), 15,
                     message="the echoed closes to reach /metrics")
    assert codes <= {str(c) for c in BY_CODE} | {"other"}, codes
