"""The HTTP side of a WebSocket: who may upgrade, and what the access log may say.

``RelayHandler`` is the gevent-websocket handler gunicorn's worker uses. Before any
upgrade it checks, in order: the path is ``/ws`` (anything else goes to Flask), HTTP/1.1
with a ``Host`` header (400), the ``Origin`` (403 unless allowed),
``Sec-WebSocket-Version: 13`` (426 otherwise) and a valid ``Sec-WebSocket-Key`` (400).
After the 101 it hands the socket over to relay's connection, which outlives the
handshake's greenlet (see ``connection``), and never lets gevent-websocket write a frame of
its own (trap 2). The access-log line of a WebSocket is written when its 101 is sent.

Every request (``/health`` too) gets ``RELAY_HANDSHAKE_TIMEOUT`` to arrive whole (408 once
its request line is in, a silent close before), and its header lines together at most
``MAX_HEADER_BYTES`` and ``MAX_HEADER_LINES`` (431 beyond): gevent alone would buffer 100
lines of 64 KiB each, 6 MB per connection, before any check. The lines are parsed by
``relay.worker.request_headers`` (the standard library's parser only for unusual ones). A
request that announces a body gets 413: no endpoint takes one, and gevent would read it
after the answer with no timeout.

A connection is *pending* (``relay.worker.admission``) from its accept (behind Fly's proxy,
from its WebSocket request, where ``Fly-Client-IP`` names the client) until its token
verifies: an address over its share is answered 429 with ``Retry-After`` and closed before
anything is read or upgraded; over the worker's budget, the oldest pending connection makes
room. The handler hands the connection's ticket to the WebSocket in its environ
(``PENDING_KEY``).

On ``RELAY_INTERNAL_PORT`` (a second socket of the same workers, for health checks and
scrapes) only ``/health`` and ``/metrics`` are served, without the pending budget: anything
else, ``/ws`` included, is answered 404 before it reaches the app.

Access-log lines, and gevent's own complaints about a malformed request (which quote the
request line), are written with every query string removed: a token passed as
``?token=`` must never reach a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

import gevent
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from relay.config import Settings
from relay.origins import OriginPolicy
from relay.worker.access_log import write_access_line
from relay.worker.admission import PENDING_KEY, PendingEvicted, PendingTicket
from relay.worker.request_headers import (
    RequestHeaders,
    RequestRefused,
    environ_headers,
    read_headers,
)
from relay.worker.socket_reader import SocketReader

HANDSHAKE_TIMEOUT = 10.0
_QUERY_STRING = re.compile(r"\?\S*")  # to the next space: all of it, even inside a repr()
# What a served WebSocket keeps of its environ: the query and the peer (the connection), the
# request line, client and user agent (gunicorn's access-log atoms).
_KEPT_ENVIRON = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "SERVER_PROTOCOL",
                 "REMOTE_ADDR", "REMOTE_PORT", "HTTP_FLY_CLIENT_IP", "HTTP_USER_AGENT",
                 "HTTP_REFERER", PENDING_KEY)
# What RELAY_INTERNAL_PORT serves; everything else there is 404.
INTERNAL_PATHS = ("/health", "/metrics")
# The answer to a connection whose address is over its pending share (relay.worker.admission).
_TOO_MANY = "too many unauthenticated connections from your address; retry shortly"


class RelayApp(Protocol):
    """What the handler uses of relay's Flask app: ``app.extensions["relay"]``
    (``relay.worker.app.RelayExtension``)."""

    settings: Settings

    def admit(self, address: str) -> PendingTicket | None: ...

    def serve_websocket(self, environ: dict[str, Any], sock: Any, rfile: Any,
                        owned: bool) -> None: ...


def relay_of(application: Any) -> RelayApp | None:
    """relay's extension of the app gunicorn loaded; ``None`` when that app is a WSGI
    middleware around relay's (its WebSockets then go through Flask's ``/ws`` route)."""
    extensions = getattr(application, "extensions", None)
    return extensions.get("relay") if isinstance(extensions, dict) else None


def origin_allowed(origin: str | None, allowed: OriginPolicy) -> bool:
    """No ``Origin`` header (not a browser) is allowed; a browser's must match an entry of
    ``ALLOWED_ORIGINS`` (``relay.origins``: exact origins, strict patterns)."""
    if origin is None:
        return True
    return allowed.allows(origin)


class HeadersTimedOut(RequestRefused):
    """The request's header lines did not all arrive within the timeout."""

    status = "408 Request Timeout"


class BodyRefused(RequestRefused):
    """The request announced a body, which no relay endpoint takes."""

    status = "413 Content Too Large"


_TURNED_AWAY = (f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain; "
                f"charset=utf-8\r\nContent-Length: {len(_TOO_MANY) + 1}\r\nConnection: close"
                f"\r\n\r\n{_TOO_MANY}\n").encode()


def on_internal_port(server: Any, relay: RelayApp) -> bool:
    """Whether ``server`` (the gevent server of one bound socket) is the internal port's.
    Remembered on the server: its socket does not change."""
    internal = getattr(server, "relay_internal", None)
    if internal is None:
        port = relay.settings.internal_port
        try:
            internal = bool(port) and server.server_port == port
        except (AttributeError, IndexError, TypeError, OSError):  # a Unix socket: never it
            internal = False
        server.relay_internal = internal
    return bool(internal)


def fly_client_ip(environ: dict[str, Any]) -> str:
    """The client's address behind Fly's proxy: its ``Fly-Client-IP``, else the peer's."""
    return environ.get("HTTP_FLY_CLIENT_IP", "").strip() or environ.get("REMOTE_ADDR", "")


class _Upgraded:
    """What stands for gevent-websocket's ``WebSocket`` on a connection relay serves: the
    handler reads ``closed``; nothing reads or writes through it."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


class RelayHandler(WebSocketHandler, PyWSGIHandler):
    SUPPORTED_VERSIONS = ("13",)
    _ticket: PendingTicket | None = None  # this connection's place while it is pending

    def handle(self) -> None:
        try:
            super().handle()
        except PendingEvicted:
            pass  # a newcomer took its place while it was still arriving: closed, nothing said
        finally:
            self._leave_pending()

    def _leave_pending(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    def _admit(self, relay: RelayApp, address: str) -> bool:
        """Take this request's pending place; ``False`` if its address is over its share."""
        self._leave_pending()  # a keep-alive connection's previous request
        admitted = relay.admit(address)
        if admitted is None:
            return False
        self._ticket = admitted
        return True

    def _turn_away(self) -> None:
        """Answer 429 at once, reading nothing: the cheapest refusal there is (``handle``
        then closes the connection)."""
        try:
            self.socket.sendall(_TURNED_AWAY)
        except OSError:
            pass

    def read_requestline(self) -> Any:
        relay = relay_of(self.server.application)
        if (relay is not None and not relay.settings.behind_fly_proxy
                and not on_internal_port(self.server, relay)):
            # Pending from here: a request still arriving holds a slot as a WebSocket that
            # has not authenticated does. Behind Fly's proxy (which reads the request before
            # passing it on) the client is known only from the headers: upgrade_websocket.
            peer = self.client_address[0] if isinstance(self.client_address, tuple) else ""
            if not self._admit(relay, peer):
                self._turn_away()
                return None
        # Slowloris: a client gets a bounded time to send each request, its request line and
        # headers together (and idle keep-alive connections are closed after it).
        timeout = self._handshake_timeout()
        self._request_deadline = time.monotonic() + timeout
        with gevent.Timeout(timeout, False):
            return super().read_requestline()
        return None

    def _handshake_timeout(self) -> float:
        relay = relay_of(self.server.application)
        return relay.settings.handshake_timeout if relay is not None else HANDSHAKE_TIMEOUT

    def read_request(self, raw_requestline: str) -> Any:
        deadline = getattr(self, "_request_deadline", None)
        remaining = self._handshake_timeout() if deadline is None else deadline - time.monotonic()
        timer = gevent.Timeout(max(remaining, 0.001))
        timer.start()
        try:
            parsed = super().read_request(raw_requestline)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise HeadersTimedOut("request headers not received in time") from None
        finally:
            timer.close()
        if self.content_length or "chunked" in self.headers.get("transfer-encoding", "").lower():
            # No relay endpoint reads a body, and gevent would read one to its announced end
            # after the answer, with no timeout: a body trickled byte by byte held the slot.
            raise BodyRefused("relay accepts no request body")
        return parsed

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 (gevent's name)
        return read_headers(fp)

    def _headers(self) -> Iterator[tuple[str, str]]:
        # The environ's HTTP_ entries: from the parsed pairs, not from lines written back.
        if isinstance(self.headers, RequestHeaders):
            return environ_headers(self.headers)
        return super()._headers()

    def _handle_client_error(self, ex: Exception) -> Any:
        if isinstance(ex, RequestRefused):
            self.log_error("(from %s) %s", self.client_address, ex)
            return ex.answer()
        return super()._handle_client_error(ex)

    def _settings(self) -> Settings:
        relay = relay_of(self.application)
        return relay.settings if relay is not None else Settings.from_env()

    def _refuse(self, status: str, message: str, headers: list[tuple[str, str]] | None = None
                ) -> list[bytes]:
        body = message.encode()
        self.start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body))),
                                     ("Connection", "close"), *(headers or [])])
        return [body]

    def upgrade_websocket(self) -> Any:
        environ = self.environ
        relay = relay_of(self.application)
        if relay is not None and on_internal_port(self.server, relay):
            # Health checks and scrapes only: no WebSocket (and no pending place) here.
            if (environ.get("PATH_INFO") in INTERNAL_PATHS
                    and environ.get("HTTP_UPGRADE", "").lower() != "websocket"):
                return None
            return self._refuse("404 Not Found", "the internal port serves /health and "
                                "/metrics only\n")
        if environ.get("PATH_INFO") != "/ws" or (
                environ.get("HTTP_UPGRADE", "").lower() != "websocket"):
            # Not a WebSocket: its request has arrived and is answered at once, so it is
            # pending no more. Flask answers it (its websocket=True route answers 400 to a
            # plain GET of /ws: trap 1).
            self._leave_pending()
            return None
        if environ.get("REQUEST_METHOD") != "GET":
            return self._refuse("405 Method Not Allowed", "WebSocket upgrade needs GET",
                                [("Allow", "GET")])
        if "upgrade" not in environ.get("HTTP_CONNECTION", "").lower():
            return self._refuse("400 Bad Request", "Connection header must contain Upgrade")
        if self.request_version != "HTTP/1.1":
            return self._refuse("400 Bad Request", "WebSocket needs HTTP/1.1")
        if not environ.get("HTTP_HOST", "").strip():
            # RFC 6455 4.2.1 (2) and RFC 9112 3.2: an HTTP/1.1 request without Host is 400.
            return self._refuse("400 Bad Request", "Host header required")
        settings = self._settings()
        if not origin_allowed(environ.get("HTTP_ORIGIN"), settings.allowed_origins):
            self.server.log.warning("refused WebSocket from origin %r (not in ALLOWED_ORIGINS)",
                                    environ.get("HTTP_ORIGIN", "")[:200])
            return self._refuse("403 Forbidden", "origin not allowed")
        if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            return self._refuse("426 Upgrade Required", "unsupported WebSocket version",
                                [("Sec-WebSocket-Version", "13")])
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return self._refuse("400 Bad Request", "invalid Sec-WebSocket-Key")
        if relay is not None and relay.settings.behind_fly_proxy:
            # Behind Fly's proxy the peer is the proxy, whose connection may carry requests
            # of several clients: each WebSocket request counts for its own client.
            if not self._admit(relay, fly_client_ip(environ)):
                return self._refuse("429 Too Many Requests", _TOO_MANY + "\n",
                                    [("Retry-After", "1")])
        if self._ticket is not None:
            # The connection releases it once its token verifies; this handler, at the latest
            # when it ends (releasing twice is harmless).
            environ[PENDING_KEY] = self._ticket
        if relay is None:
            return self.upgrade_connection()  # Flask's /ws route reads gevent-websocket's
        self._switch_protocols(key)
        return None

    def _switch_protocols(self, key: str) -> None:
        """The 101, as gevent-websocket's ``upgrade_connection`` writes it once the checks
        above have passed (no subprotocol, no extension), without its ``WebSocket``: relay's
        connection reads and writes the socket itself, and that object's finaliser built a
        class per handshake (left to the cyclic collector)."""
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode("latin-1")).digest())
        self.websocket = _Upgraded()
        self.environ["wsgi.websocket"] = self.websocket  # the 101 as gevent-websocket's
        self.start_response("101 Switching Protocols", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept.decode("latin-1"))])

    def run_websocket(self) -> None:
        # Unlike gevent-websocket's version, never call its WebSocket.close(): relay's
        # connection has already sent a proper close frame (with a code) itself.
        self.websocket.closed = True
        relay = relay_of(self.application)
        try:
            if relay is not None:
                sock, reader = SocketReader.take_over(self.socket, self.rfile)
                self.socket = None  # the connection's now: pywsgi must neither read nor close it
                self._release_handshake()
                # The connection takes this request's pending place (PENDING_KEY) and gives
                # it up itself: it may outlive this handler while it waits for its token.
                self._ticket = None
                relay.serve_websocket(self.environ, sock, reader, True)
            else:
                list(self.application(self.environ, lambda s, h, e=None: []))
        finally:
            self.websocket = None

    def _release_handshake(self) -> None:
        """Keep of the handshake only what the connection and its access-log line read.

        The parsed headers, the full environ and gevent-websocket's WebSocket object would
        otherwise live as long as the socket. pywsgi reads ``headers`` once more when the
        WebSocket ends, to decide on keep-alive: a closed WebSocket is never kept alive.
        """
        environ = self.environ
        self.environ = {key: environ[key] for key in _KEPT_ENVIRON if key in environ}
        self.headers = {"Connection": "close"}  # type: ignore[assignment]
        self.websocket = None

    def log_request(self) -> None:
        environ = getattr(self, "environ", None)
        if not environ:
            return
        saved = {k: environ.get(k) for k in ("QUERY_STRING", "RAW_URI")}
        environ["QUERY_STRING"] = ""
        environ["RAW_URI"] = environ.get("PATH_INFO", "")
        try:
            if not write_access_line(self):
                PyWSGIHandler.log_request(self)
        finally:
            environ.update(saved)

    def log_error(self, msg: str, *args: Any) -> None:
        # e.g. "Invalid http version: 'GET /ws?token=… HTTP/9'" for a malformed request line.
        try:
            message = msg % args if args else msg
        except (TypeError, ValueError):
            message = f"{msg!r} {args!r}"
        super().log_error(_QUERY_STRING.sub("?[query removed]", message))

    def format_request(self) -> str:
        # gevent's own error lines include the request line: drop the query string there too.
        requestline = getattr(self, "requestline", "") or ""
        method, _, rest = requestline.partition(" ")
        target, _, version = rest.partition(" ")
        self.requestline = f"{method} {target.split('?', 1)[0]} {version}".strip()
        try:
            return super().format_request()
        finally:
            self.requestline = requestline
