"""relay's request-header parser (relay.worker.request_headers) against the standard
library's, which gevent used: the same headers, the same environ, the same budget. In
process: the handshake's HTTP answers through a real relay are tests/test_hostile_handshake.py.
"""

from __future__ import annotations

import io
from http import client
from types import SimpleNamespace

import pytest
from gevent.pywsgi import WSGIHandler, headers_factory

from relay.worker.request_headers import (
    MAX_HEADER_LINES,
    HeadersTooLarge,
    RequestHeaders,
    environ_headers,
    read_headers,
)

BROWSER = (b"Host: relay.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n"
           b"Upgrade: websocket\r\nOrigin: https://app.example.com\r\n"
           b"Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")

# Each: header lines as a client may send them, then whatever follows the empty line.
REQUESTS = {
    "browser": BROWSER,
    "bare LF": b"Host: a\nUpgrade: websocket\n\n",
    "no space after colon": b"Host:a\r\nX:\r\n\r\n",
    "trailing and leading blanks": b"Host: \t a b \t \r\nX-Empty:\r\nX-Sp:   \r\n\r\n",
    "repeated header": b"Origin: https://a\r\nOrigin: https://b\r\nHost: x\r\n\r\n",
    "mixed case names": b"HOST: x\r\nsec-websocket-key: k\r\nUpGrAdE: websocket\r\n\r\n",
    "underscore name": b"Host: x\r\nX_Forwarded: evil\r\nContent-Type: a/b\r\n"
                       b"Content-Length: 0\r\n\r\n",
    "folded header": b"Host: x\r\nX-Long: a\r\n b\r\n\tc\r\nUpgrade: websocket\r\n\r\n",
    "continuation first": b" Host: x\r\nUpgrade: websocket\r\n\r\n",
    "line without colon": b"Host: x\r\nnot a header\r\nUpgrade: websocket\r\n\r\n",
    "name with a space": b"Host: x\r\nBad Name: y\r\nUpgrade: websocket\r\n\r\n",
    "empty name": b"Host: x\r\n: y\r\nUpgrade: websocket\r\n\r\n",
    "mbox From line": b"From nobody\r\nHost: x\r\n\r\n",
    "8-bit value": "Host: x\r\nX-Name: caf\u00e9\x85\r\nUpgrade: websocket\r\n\r\n"
                   .encode("latin-1"),
    "bare CR inside": b"Host: x\r\nX-A: 1\r2: 3\r\nUpgrade: websocket\r\n\r\n",
    "vertical tab and form feed": b"Host: x\r\nX-A: 1\x0b2\x0c3\r\nUpgrade: websocket\r\n\r\n",
    "NUL in value": b"Host: x\r\nX-A: 1\x002\r\n\r\n",
    "colon in value": b"Host: [::1]:8080\r\nX-Url: http://a:b@c/\r\n\r\n",
    "ends without empty line": b"Host: x\r\nUpgrade: websocket\r\n",
    "no headers": b"\r\n",
    "nothing": b"",
    "body after": b"Host: x\r\nContent-Length: 5\r\n\r\nhello",
}


def _standard(raw: bytes) -> object:
    return headers_factory(io.BytesIO(raw))


def _environ(headers: object) -> list[tuple[str, str]]:
    """gevent's own HTTP_ entries for ``headers`` (what its handler did before)."""
    return list(WSGIHandler._headers(SimpleNamespace(headers=headers)))  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", REQUESTS.values(), ids=REQUESTS.keys())
def test_headers_are_the_standard_librarys(raw: bytes) -> None:
    ours, theirs = read_headers(io.BytesIO(raw)), _standard(raw)
    assert ours.items() == theirs.items()
    assert list(ours.headers) == list(theirs.headers)
    assert ours.status == theirs.status
    for name in ("host", "Upgrade", "origin", "CONTENT-TYPE", "x-long", "missing"):
        assert ours.get(name, "-") == theirs.get(name, "-")
    assert ours.typeheader == theirs.typeheader
    environ = (list(environ_headers(ours)) if isinstance(ours, RequestHeaders)
               else _environ(ours))
    assert environ == _environ(theirs)


@pytest.mark.parametrize("raw", [REQUESTS[name] for name in
                                 ("browser", "bare LF", "repeated header", "underscore name",
                                  "colon in value", "no headers", "body after")])
def test_plain_requests_skip_the_email_parser(raw: bytes) -> None:
    assert isinstance(read_headers(io.BytesIO(raw)), RequestHeaders)


@pytest.mark.parametrize("name", ["folded header", "line without colon", "8-bit value",
                                  "bare CR inside", "mbox From line"])
def test_unusual_lines_go_to_the_standard_parser(name: str) -> None:
    assert isinstance(read_headers(io.BytesIO(REQUESTS[name])), client.HTTPMessage)


def test_the_body_is_left_unread() -> None:
    stream = io.BytesIO(REQUESTS["body after"])
    read_headers(stream)
    assert stream.read() == b"hello"


def test_deleting_a_header_removes_every_one_of_that_name() -> None:
    headers = read_headers(io.BytesIO(b"Content-Length: 1\r\ncontent-length: 2\r\nA: b\r\n\r\n"))
    del headers["CONTENT-LENGTH"]
    del headers["absent"]
    assert headers.items() == [("A", "b")]


def test_the_budget_refuses_too_many_lines_before_reading_them_all() -> None:
    raw = b"".join(b"X-%d: y\r\n" % i for i in range(MAX_HEADER_LINES + 1)) + b"\r\n"
    stream = io.BytesIO(raw + b"rest")
    with pytest.raises(HeadersTooLarge):
        read_headers(stream)
    assert stream.read() == b"\r\nrest"
    lines = b"".join(b"X-%d: y\r\n" % i for i in range(MAX_HEADER_LINES)) + b"\r\n"
    assert len(read_headers(io.BytesIO(lines)).items()) == MAX_HEADER_LINES


def test_the_budget_refuses_a_long_line_before_buffering_it() -> None:
    stream = io.BytesIO(b"X: " + b"a" * 40_000 + b"\r\n\r\n")
    with pytest.raises(HeadersTooLarge):
        read_headers(stream)
    assert len(stream.read()) < 10_000
