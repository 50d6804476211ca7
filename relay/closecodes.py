"""Every way relay ends a WebSocket, as one table: code, short reason, and client advice.

Ranges: 1000-1015 are RFC 6455 codes; 4000-4999 are relay's own (application codes). 4000
is the one code a *client* sends (the server only echoes it); every other code here is the
server's. A reason travels in the close frame, so it stays well under 123 bytes. The docs table in
docs/protocol.md and the JS client's ``client/src/closeCodes.js`` are derived from this one
(``python -m relay close-codes --js``; a test keeps them equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    reason: str
    # What a client should do: "yes" reconnect with backoff (and resume), "new-token" fetch a
    # new token first, "no" stop (terminal, or a client bug that a retry would repeat).
    reconnect: str


NORMAL = CloseCode(1000, "NORMAL", "normal closure", "no")
GOING_AWAY = CloseCode(1001, "GOING_AWAY", "going away", "yes")
PROTOCOL_ERROR = CloseCode(1002, "PROTOCOL_ERROR", "protocol error", "no")
UNSUPPORTED_DATA = CloseCode(1003, "UNSUPPORTED_DATA", "binary frames are not supported", "no")
INVALID_PAYLOAD = CloseCode(1007, "INVALID_PAYLOAD", "invalid UTF-8", "no")
POLICY_VIOLATION = CloseCode(1008, "POLICY_VIOLATION", "policy violation", "yes")
MESSAGE_TOO_BIG = CloseCode(1009, "MESSAGE_TOO_BIG", "message too big", "no")
INTERNAL_ERROR = CloseCode(1011, "INTERNAL_ERROR", "internal error", "yes")
SERVICE_RESTART = CloseCode(1012, "SERVICE_RESTART", "service restart", "yes")
TRY_AGAIN_LATER = CloseCode(1013, "TRY_AGAIN_LATER", "try again later", "yes")
# Sent by the bundled client when it drops a connection it takes for dead or stale (no
# heartbeat from the server, the network changed, the tab woke from sleep) before it
# reconnects at once and resumes. The server echoes it and counts it by code.
STALE_CONNECTION = CloseCode(4000, "STALE_CONNECTION", "stale connection", "yes")
UNAUTHORIZED = CloseCode(4001, "UNAUTHORIZED", "unauthorized", "new-token")
FORBIDDEN = CloseCode(4003, "FORBIDDEN", "forbidden", "no")
TOO_MANY_CONNECTIONS = CloseCode(4008, "TOO_MANY_CONNECTIONS", "too many connections", "yes")
SLOW_CONSUMER = CloseCode(4009, "SLOW_CONSUMER", "slow consumer", "yes")
AUTH_TIMEOUT = CloseCode(4010, "AUTH_TIMEOUT", "auth timeout", "yes")
HEARTBEAT_TIMEOUT = CloseCode(4011, "HEARTBEAT_TIMEOUT", "heartbeat timeout", "yes")

ALL: tuple[CloseCode, ...] = (
    NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION,
    MESSAGE_TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART, TRY_AGAIN_LATER, STALE_CONNECTION,
    UNAUTHORIZED, FORBIDDEN,
    TOO_MANY_CONNECTIONS, SLOW_CONSUMER, AUTH_TIMEOUT, HEARTBEAT_TIMEOUT,
)
BY_CODE = {c.code: c for c in ALL}

# Reserved by RFC 6455 (7.4.1): never sent in a close frame, only reported where a close is
# observed (log lines, the watch tool).
NO_STATUS_RECEIVED = 1005  # a close frame without a code
ABNORMAL_CLOSURE = 1006  # the connection ended without any close frame


def as_javascript() -> str:
    """client/src/closeCodes.js: the table, one entry per line, and the codes by name."""
    lines = [
        "// Generated from relay/closecodes.py by: python -m relay close-codes --js — do not edit.",
        "/** @type {import('../index.js').CloseCode[]} */",
        "export const CLOSE_CODES = [",
    ]
    for c in ALL:
        entry = {"code": c.code, "name": c.name, "reason": c.reason, "reconnect": c.reconnect}
        lines.append(f"  {json.dumps(entry)},")
    lines.append("];")
    # The codes by name, so that the client's own closes (4000) come from this table too.
    lines.append("export const CLOSE_CODE = Object.freeze({")
    lines.extend(f"  {c.name}: {c.code}," for c in ALL)
    lines.append("});")
    return "\n".join(lines) + "\n"
