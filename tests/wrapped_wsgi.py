"""relay's app behind a WSGI middleware, as a deployment might wrap it (ProxyFix, an error
reporter): the handshake handler no longer sees ``app.extensions["relay"]`` and goes through
Flask's ``/ws`` route, whose connection keeps its greenlet (tests/test_wrapped_app.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from wsgi import app as relay_app


class Middleware:
    def __init__(self, inner: Callable[..., Iterable[bytes]]) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        self.calls += 1
        return self.inner(environ, start_response)


app = Middleware(relay_app)
