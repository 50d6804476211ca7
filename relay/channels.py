"""Which PostgreSQL channels a user receives, and which table a channel stands for.

A channel name is built from a template (``user_Subscription_{userId}``) and a user id taken
from a verified token. PostgreSQL truncates identifiers silently at 63 bytes and folds
unquoted names to lower case, so a user id that cannot form a valid channel is refused here,
never truncated; the listener LISTENs with quoted identifiers.
"""

from __future__ import annotations

import re

MAX_IDENTIFIER_BYTES = 63
# Letters, digits and a few separators used by UUIDs, e-mails and slugs. No quotes, spaces,
# control characters or non-ASCII look-alikes.
_SAFE_USER_ID = re.compile(r"[A-Za-z0-9_.@:-]+")


class InvalidChannel(ValueError):
    """The user id cannot form a channel name (close 4003)."""


def channels_for(user_id: str, templates: tuple[str, ...]) -> tuple[str, ...]:
    if not _SAFE_USER_ID.fullmatch(user_id):
        raise InvalidChannel("userId has characters outside [A-Za-z0-9_.@:-]")
    names = tuple(t.replace("{userId}", user_id) for t in templates)
    for name in names:
        if len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise InvalidChannel("userId too long for a channel name")
    return names


def valid_channel(name: str) -> bool:
    """Whether PostgreSQL can LISTEN to ``name`` as a quoted identifier, exactly as written:
    not empty (a syntax error that ends the session), no NUL, at most 63 bytes (longer is
    truncated, and the notifications would come under another name)."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate, from JSON's \ud800
        return False
    return 0 < size <= MAX_IDENTIFIER_BYTES and "\x00" not in name


def table_of(channel: str) -> str:
    """``user_Subscription_42`` → ``subscription``: the part between the first two underscores."""
    parts = channel.split("_", 2)
    if len(parts) >= 3 and parts[0] == "user":
        return parts[1].lower()
    return channel.split("_", 1)[0].lower()
