"""The client protocol's JSON messages, both ways, in one place (docs/protocol.md).

Server → client: every message is built here, as the exact bytes of its JSON text, ready to
be framed. The listener builds ``update`` once per notification and the same bytes go to
every recipient (on every worker); a worker builds the others. Client → server:
``parse_client_message`` and ``resume_cursors`` check what a client sends, strictly,
and refuse the rest with ``InvalidMessage`` (the connection closes 1008 with its reason).

The WebSocket framing around these messages is ``relay.worker.websocket``'s; the close
codes are ``relay.closecodes``'.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from relay.channels import table_of, valid_channel

# The ``type`` of each message. Server → client:
CONNECTED = "connected"
UPDATE = "update"
RESYNC = "resync"
PING = "ping"
TOKEN_EXPIRING = "token_expiring"
TOKEN_REFRESHED = "token_refreshed"
# Client → server:
AUTH = "auth"
PONG = "pong"
REFRESH = "refresh"

# A resume map names at most a user's own channels; these bounds leave room for more
# templates than anyone configures while keeping every request to the listener small.
MAX_RESUME_ENTRIES = 32
MAX_CURSOR_CHARS = 128


class InvalidMessage(ValueError):
    """A client message that breaks the protocol; ``str()`` is the close reason (1008)."""


# ----- server → client -----


def encode_update(channel: str, payload: str, cursor_stream: str, seq: int,
                  tag: str = "") -> bytes:
    """The ``update`` message for one notification; its cursor is ``"<stream>:<seq>"``, or
    ``"<epoch>:<seq>:<tag>"`` for a message of the database's durable history (``tag``)."""
    return encode_update_stamped(channel, payload, cursor_stream, seq, tag)[0]


def encode_update_stamped(channel: str, payload: str, cursor_stream: str, seq: int,
                          tag: str = "") -> tuple[bytes, object]:
    """``encode_update``, and the payload's top-level ``"ts"`` (the bundled trigger's commit
    time; ``None`` without one), read from the same parse: a second look at the payload for
    the latency histogram was a tenth of the listener's CPU (bench sweep).

    The payload is validated as JSON and spliced in, not re-serialised. orjson takes the
    common case (a quarter of the standard library's time; bench burst); a payload it refuses
    (NaN, lone surrogates, out-of-range numbers, not JSON) takes the standard library's path,
    so what is accepted, and the bytes sent, are unchanged.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _encode_update_stdlib(channel, payload, cursor_stream, seq, tag)
    if type(data) is dict:
        table = data.get("table")
        stamp = data.get("ts")
    else:
        table = stamp = None
    head = orjson.dumps({
        "type": UPDATE,
        "table": table if isinstance(table, str) and table else table_of(channel),
        "channel": channel,
        "seq": seq,
        "cursor": f"{cursor_stream}:{seq}:{tag}" if tag else f"{cursor_stream}:{seq}",
    })
    return b"".join((head[:-1], b',"data":', payload.strip().encode(), b"}")), stamp


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON for browsers


def _encode_update_stdlib(channel: str, payload: str, cursor_stream: str, seq: int,
                          tag: str) -> tuple[bytes, object]:
    table = None
    stamp = None
    data_text: str
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
        data_text = payload.strip()
        if isinstance(data, dict):
            stamp = data.get("ts")
            if isinstance(data.get("table"), str):
                table = data["table"]
    except (ValueError, RecursionError):
        data_text = json.dumps(payload, ensure_ascii=False)
    head = json.dumps(
        {
            "type": UPDATE,
            "table": table or table_of(channel),
            "channel": channel,
            "seq": seq,
            "cursor": f"{cursor_stream}:{seq}:{tag}" if tag else f"{cursor_stream}:{seq}",
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f'{head[:-1]},"data":{data_text}}}'.encode(), stamp


def encode_connected(user_id: str, channels: tuple[str, ...], epoch: object,
                     cursors: dict[str, str], expires_at: int, ping_interval: float,
                     resumed: bool) -> bytes:
    """``connected``: sent once the listener has LISTENed the user's channels."""
    return _encode({"type": CONNECTED, "userId": user_id, "channels": list(channels),
                    "epoch": epoch, "cursors": cursors, "expiresAt": expires_at,
                    "pingInterval": ping_interval, "resumed": resumed})


def encode_resync(reason: str, channels: list[str], cursors: dict[str, Any]) -> bytes:
    """``resync``: updates of these channels may have been missed; refetch from ``cursors``."""
    return _encode({"type": RESYNC, "reason": reason, "channels": channels, "cursors": cursors})


def encode_token_expiring(expires_at: int, seconds_left: int) -> bytes:
    return _encode({"type": TOKEN_EXPIRING, "expiresAt": expires_at, "in": seconds_left})


def encode_token_refreshed(expires_at: int) -> bytes:
    return _encode({"type": TOKEN_REFRESHED, "expiresAt": expires_at})


ENCODED_PING = b'{"type":"ping"}'


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


# ----- client → server -----


def parse_client_message(text: str) -> dict[str, Any]:
    """A client's text message: a JSON object with a string ``type``."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidMessage("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise InvalidMessage("message has no type")
    return message


def resume_cursors(resume: object, channels: tuple[str, ...]) -> dict[str, str]:
    """The cursors of a client's ``resume`` that concern its channels.

    Checked strictly before anything is sent to the listener: an object of channel name →
    cursor string (or null), bounded in entries and sizes; anything else is refused with a
    reason (a deeply nested value used to fail only when the worker re-encoded it, a 1011
    that left its request behind for the worker's life). Well-formed entries for other
    channels are ignored, not refused: a client whose user changed may still hold the
    previous user's cursors, a refusal would make it reconnect in a loop, and ignoring them
    discloses nothing."""
    if resume is None:
        return {}
    if not isinstance(resume, dict):
        raise InvalidMessage("invalid resume: not an object")
    if len(resume) > MAX_RESUME_ENTRIES:
        raise InvalidMessage("invalid resume: too many entries")
    for channel, cursor in resume.items():
        if not valid_channel(channel):
            raise InvalidMessage("invalid resume: a key is not a channel name")
        # null is what a resync gives for a channel with no position yet (docs/protocol.md).
        if cursor is not None and (not isinstance(cursor, str)
                                   or len(cursor) > MAX_CURSOR_CHARS):
            raise InvalidMessage("invalid resume: a cursor is not a short string")
    return {channel: cursor for channel, cursor in resume.items() if channel in channels}


def parse_resume_query(text: str) -> object:
    """The ``?resume=`` query parameter: JSON text (checked by ``resume_cursors``)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # deep nesting fits in a request line
        raise InvalidMessage("invalid resume: not JSON") from None
