"""The shared channel's wire format (protocol ``r1``), as relay's SQL writes it.

``relay_publish`` (sql/002_relay_functions.sql) NOTIFYs one channel (``RELAY_NOTIFY_CHANNEL``)
for every message, with the logical channel inside the payload::

    r1 <kind> <pos> <seq> <tag> <chlen> <channel> <body>

Single spaces; ``<pos>``, ``<seq>`` and ``<chlen>`` are decimal, ``<tag>`` hexadecimal;
``<chlen>`` counts the channel's characters (code points, which is what a decoded ``str``
holds), so a channel may contain spaces or quotes; ``<body>`` is the rest, the message as
published. Every instance receives every message of the database, so the listener reads the
fixed header only and drops a channel it has no subscriber for before it looks at the body,
let alone parses its JSON. ``parse`` is the only code that knows the layout.

Kinds: ``n`` a message without a database number (the listener numbers it in memory); ``i``
relay's SQL was installed (``RELAY_USER_CHANNELS=auto`` switches); ``c`` a setting changed;
``k`` a user's tokens were revoked (``relay_revoke``: the channel field holds the user id).
The durable history (issue 13) adds ``m``, ``r``, ``s`` and ``e`` on the same layout.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "r1 "

MESSAGE = "n"  # a message, numbered by the listener
INSTALLED = "i"  # relay's SQL installed or upgraded; body: its version
SETTING = "c"  # relay.set() changed a setting; body: its name
REVOKED = "k"  # relay_revoke(): channel the user id, body the time (epoch seconds)


class Frame(NamedTuple):
    kind: str
    pos: int
    seq: int
    tag: str
    channel: str
    body: str


def parse(payload: str) -> Frame | None:
    """The frame in a notification of the shared channel; ``None`` when it is not one (another
    program's NOTIFY on the same channel, or a forgery that does not even have the shape)."""
    if not payload.startswith(PREFIX):
        return None
    parts = payload.split(" ", 6)
    if len(parts) != 7:
        return None
    _, kind, pos, seq, tag, chlen, rest = parts
    try:
        length = int(chlen)
        position, number = int(pos), int(seq)
    except ValueError:
        return None
    if not 0 <= length < len(rest) or rest[length] != " " or len(kind) != 1:
        return None
    return Frame(kind, position, number, tag, rest[:length], rest[length + 1:])
