"""The development-only live demo at ``/demo``: a page that uses the real browser client.

Registered by ``create_app`` only when ``RELAY_DEV`` is on; in production ``/demo`` is a
404 (tested). ``/demo/token`` plays the app's token endpoint for a chosen user id, which is
why it must never exist outside development.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, jsonify, request, send_from_directory

from relay.auth import issue_token
from relay.channels import InvalidChannel, channels_for
from relay.config import Settings

STATIC = Path(__file__).resolve().parent / "static"
CLIENT_SRC = Path(__file__).resolve().parents[2] / "client" / "src"


def demo_blueprint(settings: Settings) -> Blueprint:
    demo = Blueprint("demo", __name__)

    @demo.get("/demo")
    def page() -> Response:
        response = send_from_directory(STATIC, "demo.html")
        # The page loads its own module scripts and talks to this origin's /ws only.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'"
        )
        return response

    @demo.get("/demo/client/<path:name>")
    def client_module(name: str) -> Response:
        if not name.endswith(".js"):
            abort(404)
        response = send_from_directory(CLIENT_SRC, name, mimetype="text/javascript")
        response.headers["Content-Security-Policy"] = "default-src 'none'"
        return response

    @demo.get("/demo/demo.js")
    def script() -> Response:
        return send_from_directory(STATIC, "demo.js", mimetype="text/javascript")

    @demo.get("/demo/token")
    def token() -> Response:
        user_id = request.args.get("userId", "42")
        try:
            channels_for(user_id, settings.channel_templates)
        except InvalidChannel as exc:
            return jsonify({"error": str(exc)}), 400
        ttl = max(5, int(request.args.get("ttl", "3600")))
        if settings.max_token_lifetime:
            ttl = min(ttl, int(settings.max_token_lifetime))
        return jsonify({"token": issue_token(user_id, settings.jwt_secret, ttl,
                                             issuer=settings.jwt_issuer,
                                             audience=settings.jwt_audience)})

    return demo
