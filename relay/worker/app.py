"""The Flask app of a worker: ``/ws`` (the WebSocket), ``/health`` and ``/metrics``.

``create_app(settings)`` builds the app and its ``Node``; ``wsgi.py`` only calls it. relay's
state on the app is Flask's extension slot, ``app.extensions["relay"]`` (a
``RelayExtension``): the handshake handler reads the settings there, and hands each
upgraded WebSocket to its ``serve_websocket``. The ``/ws`` route is declared with
``websocket=True`` (trap 1); the handshake checks themselves live in ``handshake`` and run
before Flask sees the request.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, jsonify, request

from relay.config import Settings
from relay.worker.admission import PENDING_KEY, PendingTicket
from relay.worker.connection import Connection
from relay.worker.node import Node

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def iso_now() -> str:
    """``2024-01-01T00:00:00.000Z``, as JavaScript's ``toISOString()`` writes it."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def client_address(environ: dict[str, Any], behind_fly_proxy: bool) -> str:
    """The client's IP for log lines: behind Fly's proxy (``FLY_APP_NAME`` set) its
    ``Fly-Client-IP`` if that is an IP address; anywhere else any client can send that
    header, so the peer's address."""
    if behind_fly_proxy:
        try:
            return str(ipaddress.ip_address(environ.get("HTTP_FLY_CLIENT_IP", "").strip()))
        except ValueError:
            pass
    return environ.get("REMOTE_ADDR") or "-"


def _bearer_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time as bytes.

    ``hmac.compare_digest`` raises TypeError for a ``str`` with non-ASCII characters, which a
    client controls: that was a 500 with a traceback. WSGI hands header values over as
    latin-1 text, so encoding them back gives the bytes that arrived."""
    try:
        received = header.encode("latin-1")
    except UnicodeEncodeError:  # not from a real request; nothing a client can match
        return False
    return hmac.compare_digest(received, f"Bearer {token}".encode())


class RelayExtension:
    """``app.extensions["relay"]``: the settings and the worker's node, and the door through
    which the handshake handler hands over an upgraded WebSocket."""

    def __init__(self, settings: Settings, node: Node) -> None:
        self.settings = settings
        self.node = node

    def admit(self, address: str) -> PendingTicket | None:
        """A pending connection's place for ``address``, or ``None`` when that address is
        over its share (``Admission.admit``)."""
        admission = self.node.admission
        evicted = admission.evicted
        admitted = admission.admit(address)
        if admitted is None:
            self.node.count("pending_refused")
            return None
        if admission.evicted != evicted:
            self.node.count("pending_evicted")
        return admitted

    def serve_websocket(self, environ: dict[str, Any], sock: Any, rfile: Any,
                        owned: bool) -> None:
        """Start one upgraded WebSocket (called once the 101 has been sent). ``owned``: the
        socket is the connection's to keep, so this returns once the connection is attached;
        otherwise this runs the connection to its end.

        The handshake handler calls this directly, so a connection that lives for hours
        holds neither a Flask request context nor Flask's frames on its greenlet's stack."""
        self.node.count("upgraded")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        conn = Connection(self.node, sock, rfile,
                          client_address(environ, self.settings.behind_fly_proxy),
                          environ.get(PENDING_KEY))
        start = conn.serve if owned else conn.run
        start(query.get("token", [None])[0], query.get("resume", [None])[0])


def create_app(settings: Settings | None = None, start: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("relay")
    node = Node(settings)
    relay = RelayExtension(settings, node)
    app.extensions["relay"] = relay
    worker_started = time.time()

    @app.route("/ws", websocket=True)
    def websocket() -> Response:
        # Reached only when the app is wrapped by middleware that hides it from the handler.
        ws = request.environ.get("wsgi.websocket")
        if ws is None:  # a plain GET that Werkzeug still matched
            return Response("WebSocket upgrade required\n", status=426,
                            headers={"Upgrade": "websocket"})
        relay.serve_websocket(request.environ, ws.handler.socket, ws.handler.rfile, False)
        return Response(b"")

    @app.get("/health")
    def health() -> Response:
        # The listener's figures as it last pushed them (at most about a second old): a
        # flood of /health costs it nothing (issue 14, item 7).
        stats = node.instance_stats()
        healthy = bool(stats) and stats.get("database") == "connected"
        local_users = node.users_here()
        local_conns = len(node.connections)
        listener = stats or {}
        body: dict[str, Any] = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": iso_now(),
            "uptime": int(time.time() - listener.get("instanceStartedAt", worker_started)),
            "connectedUsers": stats["connectedUsers"] if stats else local_users,
            "totalConnections": stats["totalConnections"] if stats else local_conns,
            "listener": {
                "status": "up" if stats else "down",
                "database": listener.get("database", "unknown"),
                "channels": listener.get("channels", 0),
                "listened": listener.get("listened", 0),
                "lingering": listener.get("lingering", 0),
                "userChannels": listener.get("userChannels"),
                "notifyChannel": listener.get("notifyChannel"),
                "notifyQueueUsage": listener.get("notifyQueueUsage", 0.0),
                "relaySql": listener.get("relaySql", 0),
                "workers": listener.get("workers", 0),
                "epoch": listener.get("epoch"),
                "databaseReconnects": listener.get("databaseReconnects", 0),
                "databaseRefused": listener.get("databaseRefused") or None,
                "history": listener.get("history", "memory"),
                "outbox": {
                    "position": listener.get("outboxPosition"),
                    "catchUps": listener.get("outboxCatchUps", 0),
                    "caughtUp": listener.get("outboxCaughtUp", 0),
                    "holes": listener.get("outboxHoles", 0),
                    "cleaned": listener.get("outboxCleaned", 0),
                },
                "statsAge": round(max(0.0, time.time() - listener.get("sentAt", time.time())),
                                  3),
                "statsBuilt": listener.get("statsBuilt", 0),
            },
            "worker": {"pid": os.getpid(), "connections": local_conns, "users": local_users,
                       "draining": node.draining, "attachesInFlight": node.attaches_in_flight()},
        }
        if not healthy:
            body["reason"] = ("listener unreachable" if not stats
                              else f"database refused: {stats['databaseRefused']}"
                              if stats.get("databaseRefused") else "database disconnected")
        return jsonify(body), 200 if healthy else 503

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from relay.worker.metrics import render

        if settings.metrics_token and not _bearer_matches(
                request.headers.get("Authorization", ""), settings.metrics_token):
            return Response("unauthorized\n", status=401,
                            headers={"WWW-Authenticate": "Bearer"})
        stats = node.instance_stats()
        body = render(stats, {"connections": len(node.connections)})
        return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    if settings.dev_mode:
        from relay.dev.demo import demo_blueprint

        app.register_blueprint(demo_blueprint(settings))

    if start:
        node.start()
    return app
