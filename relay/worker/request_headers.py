"""A request's header lines: read within a budget, and parsed without the email package.

``relay.worker.handshake.RelayHandler.MessageClass`` calls ``read_headers`` where gevent's
handler would call ``http.client.parse_headers``. That parser runs the lines through
``email.feedparser`` (~220 µs for a browser's WebSocket handshake, the largest single
piece of a worker's CPU per handshake in a reconnect storm). Here every header line of the
plain shape — a name of visible characters, a colon, a value of printable ASCII and tabs —
is split in place (~15 µs for the same request). A request with any other line (folded,
8-bit, a bare CR, no colon, a name with a space: what the email parser treats as a defect, a
continuation or the end of the headers) is handed to ``http.client.parse_headers`` whole, so
that its result is exactly the standard library's, as it was before.

The budget: the header lines of a request together at most ``MAX_HEADER_BYTES`` and
``MAX_HEADER_LINES`` (431 beyond), refused as soon as they add up, before they are buffered.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from gevent.pywsgi import headers_factory

# All header lines of a request together; a browser's WebSocket handshake is under 2 KB, and
# nginx's default (4 buffers of 8 KB) is in the same range.
MAX_HEADER_BYTES = 32 * 1024
# A browser sends about 15. Under http.client's own limit of 100, whose error is not a
# ValueError and so would reach the log as a traceback.
MAX_HEADER_LINES = 64
_LINE_LIMIT = 65536 + 1  # what http.client asks of each readline (its _MAXLINE + 1)
_END = (b"\r\n", b"\n", b"")
# A line the email parser reads as one header, name and value as split here: RFC 5322's
# field name (what its headerRE takes, without the "From " of an mbox) and a value with no
# character it would split a line on or decode differently.
_PLAIN = re.compile(r"(?:[!-9;-~]+:[\t -~]*\r?\n)*(?:\r?\n)?")
_FIELD = re.compile(r"([!-9;-~]+):[\t ]*([\t -~]*)\r?\n")


class RequestRefused(ValueError):
    """A request refused before it reaches the app: answered ``status`` and closed.

    A ``ValueError``, as gevent expects of a client's mistake (no traceback in the log).
    """

    status = "400 Bad Request"

    def answer(self) -> tuple[str, bytes]:
        """What ``handle_one_request`` returns: gevent sends it and closes the connection."""
        return (self.status.split()[0],
                f"HTTP/1.1 {self.status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                .encode())


class HeadersTooLarge(RequestRefused):
    """The request's header lines are over the budget."""

    status = "431 Request Header Fields Too Large"


class HeaderBudget:
    """The request's file read line by line, refused as soon as the lines add up to more than
    the budget, before they are all buffered."""

    __slots__ = ("_rfile", "_bytes", "_lines")

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._bytes = MAX_HEADER_BYTES
        self._lines = MAX_HEADER_LINES + 1  # and the empty line that ends them

    def readline(self, limit: int = -1) -> bytes:
        self._lines -= 1
        if self._lines < 0:
            raise HeadersTooLarge(f"more than {MAX_HEADER_LINES} header lines")
        wanted = self._bytes + 1 if limit < 0 else min(limit, self._bytes + 1)
        line: bytes = self._rfile.readline(wanted)
        self._bytes -= len(line)
        if self._bytes < 0:
            raise HeadersTooLarge(f"header lines over {MAX_HEADER_BYTES} bytes")
        return line


class RequestHeaders:
    """A request's headers as gevent's handler, gevent-websocket and gunicorn read them
    (the part of ``http.client.HTTPMessage`` they use): names case-insensitive, ``get``
    the first of a repeated one, in the order received."""

    __slots__ = ("pairs", "status", "_first")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.status = ""  # gevent reads it: a parse error's text (never one here)
        self._first: dict[str, str] | None = None  # lower-case name -> its first value

    def get(self, name: str, default: Any = None) -> Any:
        first = self._first
        if first is None:  # built on the first look-up: a handshake makes about four
            first = self._first = {}
            for key, value in reversed(self.pairs):
                first[key.lower()] = value
        return first.get(name.lower(), default)

    getheader = get

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __delitem__(self, name: str) -> None:
        name = name.lower()  # every one of that name; none is no error (as email's)
        self.pairs = [(key, value) for key, value in self.pairs if key.lower() != name]
        self._first = None

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    @property
    def headers(self) -> Iterator[str]:
        for key, value in self.pairs:
            yield f"{key}: {value}\r\n"


def read_headers(rfile: Any) -> Any:
    """The header lines of the request being read from ``rfile``, up to the empty line (or
    the end of the stream), within the budget: a ``RequestHeaders``, or what
    ``http.client.parse_headers`` makes of lines it must judge itself."""
    readline = HeaderBudget(rfile).readline
    lines: list[bytes] = []
    while True:
        line = readline(_LINE_LIMIT)
        lines.append(line)
        if line in _END:
            break
    text = b"".join(lines).decode("latin-1")
    if _PLAIN.fullmatch(text) is None:
        return headers_factory(io.BytesIO(text.encode("latin-1")))
    return RequestHeaders(_FIELD.findall(text))


def environ_headers(headers: RequestHeaders) -> Iterator[tuple[str, str]]:
    """``HTTP_*`` environ entries of plain headers, as gevent's ``WSGIHandler._headers``
    makes them from its lines (a name with ``_`` dropped; Content-Type and Content-Length
    are not ``HTTP_`` entries)."""
    for name, value in headers.pairs:
        if "_" in name:
            continue
        key = name.replace("-", "_").upper()
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            yield "HTTP_" + key, value.strip()

