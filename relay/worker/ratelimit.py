"""One client's message rate (``RELAY_CLIENT_MSG_RATE``): a token bucket of twice the rate.

Owned by the ``relay.worker.connection.Connection``: every frame the client sends takes a
token (the frame reader's ``on_frame`` hook, before the payload is read, and the lone pong
taken without a reader); a client with none left is closed 1008.
"""

from __future__ import annotations

import time

from relay import closecodes
from relay.worker.websocket import ProtocolViolation


class MessageRate:
    # One per connection, of which a worker holds tens of thousands: slots, no __dict__.
    __slots__ = ("_rate", "_tokens", "_tokens_at")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate * 2
        self._tokens_at = time.monotonic()

    def take(self) -> bool:
        """One frame's worth of the client's message rate; ``False`` when it has none left."""
        now = time.monotonic()
        rate = self._rate
        self._tokens = min(rate * 2, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def check(self) -> None:
        if not self.take():
            raise ProtocolViolation(closecodes.POLICY_VIOLATION, "message rate limit")
