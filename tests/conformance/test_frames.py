"""RFC 6455 conformance of relay's frame handling, after the Autobahn|Testsuite categories
that apply to a server. Raw sockets on the client side. For every case: the close code that
arrives on the wire (or a live connection), and a bystander that keeps receiving updates.
The results table is written to docs/conformance.md at the end of the module."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conformance.wire import RawClient, frame, header_only
from tests.support import ROOT, Client, RelayProcess, notify

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
LIMIT = 131072


def pong_message(size: int) -> bytes:
    """A valid relay message (`pong`) padded with JSON whitespace to exactly ``size`` bytes."""
    body = b'{"type":"pong"}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    frames: tuple[bytes, ...]
    expect: int | str  # a close code, "pong:<hex>" (a pong with that payload) or "alive"


def _cases() -> list[Case]:
    cases = [
        Case("1.1 text 0 bytes (7-bit)", "framing", (frame(PING, b""),), "pong:"),
        Case("1.2 text 125 bytes (7-bit)", "framing", (frame(TEXT, pong_message(125)),), "alive"),
        Case("1.3 text 126 bytes (16-bit)", "framing", (frame(TEXT, pong_message(126)),),
             "alive"),
        Case("1.4 text 65535 bytes (16-bit)", "framing",
             (frame(TEXT, pong_message(65535)),), "alive"),
        Case("1.5 text 65536 bytes (64-bit)", "framing",
             (frame(TEXT, pong_message(65536)),), "alive"),
        Case("1.6 text 200 bytes in 64-bit encoding", "framing",
             (frame(TEXT, pong_message(200), length_form="64"),), "alive"),
        Case("2.1 ping, empty payload", "ping/pong", (frame(PING, b""),), "pong:"),
        Case("2.2 ping payload echoed", "ping/pong", (frame(PING, b"hello\x00\xff"),),
             "pong:" + b"hello\x00\xff".hex()),
        Case("2.3 ping 125 bytes", "ping/pong", (frame(PING, b"p" * 125),),
             "pong:" + (b"p" * 125).hex()),
        Case("2.4 ping 126 bytes", "ping/pong", (frame(PING, b"p" * 126),), 1002),
        Case("2.5 unsolicited pong ignored", "ping/pong", (frame(PONG, b"x"),), "alive"),
        Case("5.1 fragmented ping", "fragmentation", (frame(PING, b"a", fin=False),), 1002),
        Case("5.2 continuation without start", "fragmentation",
             (frame(CONT, b"x", fin=True),), 1002),
        Case("5.3 text in 3 fragments", "fragmentation",
             (frame(TEXT, b'{"type"', fin=False), frame(CONT, b':"po', fin=False),
              frame(CONT, b'ng"}')), "alive"),
        Case("5.4 ping between fragments", "fragmentation",
             (frame(TEXT, b'{"type"', fin=False), frame(PING, b"mid"),
              frame(CONT, b':"pong"}')), "pong:" + b"mid".hex()),
        Case("5.5 new text inside a fragmented one", "fragmentation",
             (frame(TEXT, b'{"type"', fin=False), frame(TEXT, b"{}")), 1002),
        Case("6.1 invalid UTF-8 text", "utf-8", (frame(TEXT, b'{"type":"\xff"}'),), 1007),
        Case("6.2 invalid UTF-8 split across fragments", "utf-8",
             (frame(TEXT, b'{"type":"pong","x":"\xce', fin=False), frame(CONT, b'\xff"}')), 1007),
        Case("6.3 valid multi-byte UTF-8 split across fragments", "utf-8",
             (frame(TEXT, b'{"type":"pong","x":"\xce', fin=False), frame(CONT, b'\xba"}')),
             "alive"),
        Case("6.4 overlong encoding", "utf-8", (frame(TEXT, b'{"x":"\xc0\xaf"}'),), 1007),
        Case("6.5 surrogate half", "utf-8", (frame(TEXT, b'{"x":"\xed\xa0\x80"}'),), 1007),
        Case("7.1 close 1000 echoed", "close", (frame(CLOSE, close_payload(1000)),), 1000),
        Case("7.2 close 1001 echoed", "close", (frame(CLOSE, close_payload(1001)),), 1001),
        Case("7.3 close 3000 echoed", "close", (frame(CLOSE, close_payload(3000)),), 3000),
        Case("7.4 close 4999 echoed", "close", (frame(CLOSE, close_payload(4999)),), 4999),
        Case("7.5 close without payload", "close", (frame(CLOSE, b""),), 1000),
        Case("7.6 close payload of 1 byte", "close", (frame(CLOSE, b"\x03"),), 1002),
        Case("7.7 close reason of 123 bytes", "close",
             (frame(CLOSE, close_payload(1000, b"r" * 123)),), 1000),
        Case("7.8 close reason over 123 bytes", "close",
             (frame(CLOSE, close_payload(1000, b"r" * 124)),), 1002),
        Case("7.9 close reason invalid UTF-8", "close",
             (frame(CLOSE, close_payload(1000, b"\xff")),), 1007),
        Case("8.1 unmasked text", "masking", (frame(TEXT, b'{"type":"pong"}', mask=False),),
             1002),
        Case("8.2 unmasked ping", "masking", (frame(PING, b"", mask=False),), 1002),
        Case("9.1 binary frame", "data", (frame(BINARY, b"\x00\x01"),), 1003),
        Case("10.1 header claims 2^40 bytes", "limits", (header_only(TEXT, 1 << 40),), 1009),
        Case("10.2 message over the limit in fragments", "limits",
             (frame(TEXT, b" " * 100000, fin=False), header_only(CONT, 40000)), 1009),
        Case("10.3 64-bit length with the top bit set", "limits",
             (header_only(TEXT, 1 << 63),), 1002),
    ]
    for rsv in (1, 2, 4, 3):
        cases.append(Case(f"3.{rsv} reserved bits {rsv:03b}", "reserved",
                          (frame(TEXT, b'{"type":"pong"}', rsv=rsv),), 1002))
    for opcode in (3, 4, 5, 6, 7, 11, 12, 15):
        cases.append(Case(f"4.{opcode} reserved opcode {opcode}", "reserved",
                          (frame(opcode, b""),), 1002))
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
        cases.append(Case(f"7.c invalid close code {code}", "close",
                          (frame(CLOSE, close_payload(code)),), 1002))
    return cases


CASES = _cases()
RESULTS: list[tuple[Case, str]] = []


@pytest.fixture(scope="module")
def conformance_relay(postgres_url: str, schema_installed: list[str],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("conformance"),
                         env={"RELAY_MAX_MESSAGE_BYTES": str(LIMIT),
                              "RELAY_CLIENT_MSG_RATE": "1000"})
    relay.start()
    yield relay
    relay.stop()
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
    # "alive": the connection still answers a ping after the frames.
    client.send(frame(PING, b"still"))
    payload = client.read_until(PONG)
    return "alive" if payload == b"still" else "dead"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_frame_case(case: Case, conformance_relay: RelayProcess, bystander: Client,
                    postgres_url: str) -> None:
    user = "raw-" + case.category.replace("/", "-")
    client = RawClient(conformance_relay.port, f"/ws?token={conformance_relay.token(user)}")
    try:
        assert json.loads(client.read_until(TEXT) or b"{}").get("type") == "connected"
        for data in case.frames:
            client.send(data)
        observed = _observe(client, case.expect)
    finally:
        client.close()
    RESULTS.append((case, observed))
    assert observed == str(case.expect), f"{case.id}: expected {case.expect}, got {observed}"
    notify(postgres_url, "user_Usage_bystander", json.dumps({"after": case.id}))
    assert bystander.expect("update")["data"] == {"after": case.id}


def _write_table() -> None:
    if len(RESULTS) != len(CASES):
        return  # a partial run (-k, -x) must not overwrite the full table
    lines = [
        "# WebSocket conformance",
        "",
        "Generated by `tests/conformance/test_frames.py` (raw sockets, a real relay with",
        f"`RELAY_MAX_MESSAGE_BYTES={LIMIT}`). Every case also checks that a bystander client",
        "keeps receiving its updates. `alive` = the connection still answers a ping afterwards;",
        "`pong:<hex>` = the pong payload received.",
        "",
        "| case | category | expected | observed |",
        "|---|---|---|---|",
    ]
    for case, observed in RESULTS:
        expected = case.expect if isinstance(case.expect, int) else case.expect[:40]
        lines.append(f"| {case.id} | {case.category} | {expected} | {observed[:40]} |")
    passed = sum(1 for case, observed in RESULTS if observed == str(case.expect))
    lines += ["", f"{passed} of {len(RESULTS)} cases as expected.", ""]
    (ROOT / "docs" / "conformance.md").write_text("\n".join(lines))
