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

Kinds: ``m`` a message the database numbered (its ``pos`` in the outbox, its channel's
``seq``, its random ``tag``); ``r`` the same, too big for one NOTIFY: the listener reads the
row; ``s`` messages were committed that no frame carries (read the outbox from your
position); ``e`` a new epoch (body: the epoch); ``n`` a message without a database number
(outbox off: the listener numbers it in memory); ``i`` relay's SQL was installed
(``RELAY_USER_CHANNELS=auto`` switches); ``c`` a setting changed (body: its name); ``k`` a
user's tokens were revoked (``relay_revoke``: the channel field holds the user id). A kind
this relay does not know is a newer SQL's: the outbox is the truth, so it counts as ``s``.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "r1 "

MESSAGE = "n"  # a message without a database number: the listener numbers it in memory
NUMBERED = "m"  # a message numbered at commit: pos, seq and tag set; body: the payload
ROW = "r"  # a numbered message too big for NOTIFY: the listener reads its row
SYNC = "s"  # committed messages no frame carries: settle, then read from your position
EPOCH = "e"  # the database started a new history; body: the epoch
INSTALLED = "i"  # relay's SQL installed or upgraded; body: its version
SETTING = "c"  # relay.set() changed a setting; body: its name
REVOKED = "k"  # relay_revoke(): channel the user id, body the time (epoch seconds)

_NUMBERED = PREFIX + NUMBERED + " "


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


def numbered(payload: str) -> tuple[int, int, str, str, str] | None:
    """A kind ``m`` frame's ``(pos, seq, tag, channel, body)``, the frame of nearly every
    message, without building a ``Frame``; ``None`` when the payload is not one (``parse``
    then says what it is). Accepts exactly what ``parse`` accepts as kind ``m``."""
    if not payload.startswith(_NUMBERED):
        return None
    parts = payload.split(" ", 6)
    if len(parts) != 7:
        return None
    try:
        length = int(parts[5])
        position, number = int(parts[2]), int(parts[3])
    except ValueError:
        return None
    rest = parts[6]
    if not 0 <= length < len(rest) or rest[length] != " ":
        return None
    return position, number, parts[4], rest[:length], rest[length + 1:]


def tag_value(tag: str) -> int | None:
    """A frame's tag as the number the outbox stores; ``None`` when it is not 8 hex digits."""
    if len(tag) != 8:
        return None
    try:
        return int(tag, 16)
    except ValueError:
        return None
