"""Which PostgreSQL channels a user receives, and which table a channel stands for.

A channel name is built from a template (``user_Subscription_{userId}``) and a user id taken
from a verified token. PostgreSQL truncates identifiers silently at 63 bytes and folds
unquoted names to lower case, so a user id that cannot form a valid channel is refused here,
never truncated; the listener LISTENs with quoted identifiers.

**No two users share a channel.** User ids may hold ``_`` (``user_2NNEqL…`` is common), which
is also what separates a channel's parts, so a name must never be readable two ways. Two
sources of names exist: the templates relay hands users (``RELAY_CHANNELS``), and relay's row
trigger, which names ``user_<Table>_<owner>`` for each table part ``<Table>``
(``relay db trigger --channel``). The rule, checked exactly by ``check_templates`` at
start-up and ``check_table_part`` when a trigger is attached (the SQL function refuses the
same table parts when it fires):

- a table part is letters and digits, starting with a letter: with no ``_`` of its own,
  ``user_<Table>_<owner>`` reads back one way only (the table part ends at the first ``_``
  after ``user_``), whatever the owner's id holds;
- no two templates can produce the same name for any user ids, and a template produces no
  name of that trigger form unless it *is* ``user_<Table>_{userId}``: a template in the
  ``user_`` namespace must have that shape, any other prefix is free.

Why this rule and not a narrower one: forbidding ``_`` in user ids breaks real ids, and a
separator character outside the id alphabet would rename every existing channel (apps'
own triggers send ``'user_Subscription_' || id``). The check is exact, not a heuristic: each
template and the trigger's names are regular languages over the id alphabet, and a
breadth-first walk of their product finds the shortest name two of them share, within
PostgreSQL's 63 bytes, or proves there is none. That name is the example the refusal shows.
"""

from __future__ import annotations

import heapq
import itertools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

MAX_IDENTIFIER_BYTES = 63
USER_ID_PLACEHOLDER = "{userId}"
# Letters, digits and a few separators used by UUIDs, e-mails and slugs. No quotes, spaces,
# control characters or non-ASCII look-alikes.
_SAFE_USER_ID = re.compile(r"[A-Za-z0-9_.@:-]+")
USER_ID_CHARS = frozenset(string.ascii_letters + string.digits + "_.@:-")
# The table part of relay's trigger channels, user_<Table>_<owner> (sql/001: relay_notify).
TABLE_PART = re.compile(r"[A-Za-z][A-Za-z0-9]*")


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


# ----- injectivity: templates and the trigger's names never share a name -----


class TemplateError(ValueError):
    """Templates (or a table part) that let two users share a channel; ``str()`` is one
    line saying which, with an example."""


# A shape is a regular language written as steps: (characters, "1" | "+" | "*").
_Step = tuple[frozenset[str], str]
_Shape = tuple[_Step, ...]


def _literal(text: str) -> _Shape:
    return tuple((frozenset(c), "1") for c in text)


def _template_shape(template: str) -> _Shape:
    prefix, suffix = template.split(USER_ID_PLACEHOLDER)
    return _literal(prefix) + ((USER_ID_CHARS, "+"),) + _literal(suffix)


_LETTERS = frozenset(string.ascii_letters)
_ALNUM = frozenset(string.ascii_letters + string.digits)
# Every name relay's row trigger can send: user_<Table>_<owner>.
_TRIGGER_SHAPE: _Shape = (_literal("user_") + ((_LETTERS, "1"), (_ALNUM, "*"))
                          + _literal("_") + ((USER_ID_CHARS, "+"),))


def _closure(shape: _Shape, states: set[int]) -> frozenset[int]:
    """``states`` and every state a ``*`` step lets through without a character."""
    stack = list(states)
    while stack:
        state = stack.pop()
        if state < len(shape) and shape[state][1] == "*" and state + 1 not in states:
            states.add(state + 1)
            stack.append(state + 1)
    return frozenset(states)


def _advance(shape: _Shape, states: frozenset[int], char: str) -> frozenset[int]:
    """State ``i`` means: steps before ``i`` are read; ``+`` and ``*`` steps may repeat."""
    following: set[int] = set()
    for state in states:
        if state < len(shape):
            chars, repeat = shape[state]
            if char in chars:
                following.add(state if repeat == "*" else state + 1)
        if state > 0 and shape[state - 1][1] == "+" and char in shape[state - 1][0]:
            following.add(state)
    return _closure(shape, following)


# Witnesses read best with digits and letters first.
_ORDER = string.digits + string.ascii_lowercase + string.ascii_uppercase


def shortest_common_name(first: _Shape, second: _Shape,
                         max_bytes: int = MAX_IDENTIFIER_BYTES) -> str | None:
    """The shortest name (in UTF-8 bytes, as PostgreSQL counts) both shapes can produce
    within ``max_bytes``, or ``None``: a shortest-path search of their product."""
    alphabet = sorted(set().union(*(chars for chars, _ in first))
                      & set().union(*(chars for chars, _ in second)),
                      key=lambda c: (_ORDER.find(c) % 100, c))
    sizes = {char: len(char.encode()) for char in alphabet}
    start = (_closure(first, {0}), _closure(second, {0}))
    best = {start: 0}
    order = itertools.count()  # ties in insertion order: the witness reads best
    queue: list[tuple[int, int, str, tuple[frozenset[int], frozenset[int]]]] = [
        (0, next(order), "", start)]
    while queue:
        size, _, word, pair = heapq.heappop(queue)
        if size > best[pair]:
            continue
        if len(first) in pair[0] and len(second) in pair[1]:
            return word
        for char in alphabet:
            grown = size + sizes[char]
            if grown > max_bytes:
                continue
            a = _advance(first, pair[0], char)
            b = _advance(second, pair[1], char) if a else a
            if a and b and grown < best.get((a, b), max_bytes + 1):
                best[(a, b)] = grown
                heapq.heappush(queue, (grown, next(order), word + char, (a, b)))
    return None


@dataclass(frozen=True)
class Collision:
    """One name, two different owners: ``(template, user id)`` and either another
    ``(template, user id)`` or, ``table`` set, the trigger's ``(table part, owner)``."""

    name: str
    first: tuple[str, str]
    second: tuple[str, str]
    table: bool = False


def user_of(template: str, name: str) -> str | None:
    """The user id ``template`` gives ``name`` to, if any."""
    prefix, suffix = template.split(USER_ID_PLACEHOLDER)
    if len(name) <= len(prefix) + len(suffix) or not name.startswith(prefix) \
            or not name.endswith(suffix):
        return None
    user = name[len(prefix):len(name) - len(suffix)]
    return user if _SAFE_USER_ID.fullmatch(user) else None


def trigger_owner_of(name: str) -> tuple[str, str] | None:
    """``(table part, owner)`` if relay's row trigger can send ``name``."""
    if not name.startswith("user_"):
        return None
    table, sep, owner = name[5:].partition("_")
    if not sep or not TABLE_PART.fullmatch(table) or not _SAFE_USER_ID.fullmatch(owner):
        return None
    return table, owner


def trigger_template(table: str) -> str:
    """The template whose names are those of the trigger with table part ``table``."""
    return f"user_{table}_{USER_ID_PLACEHOLDER}"


def find_collision(templates: Sequence[str]) -> Collision | None:
    """A name two different owners would share under these templates and relay's trigger,
    or ``None`` when there is none. The templates must each hold ``{userId}`` once."""
    shapes = [_template_shape(t) for t in templates]
    for i, first in enumerate(templates):
        for j in range(i + 1, len(templates)):
            name = shortest_common_name(shapes[i], shapes[j])
            if name is not None:
                return Collision(name, (first, user_of(first, name) or ""),
                                 (templates[j], user_of(templates[j], name) or ""))
        owner = None if _is_trigger_template(first) else shortest_common_name(
            shapes[i], _TRIGGER_SHAPE)
        if owner is not None:
            return Collision(owner, (first, user_of(first, owner) or ""),
                             trigger_owner_of(owner) or ("", ""), table=True)
    return None


def _is_trigger_template(template: str) -> bool:
    prefix, suffix = template.split(USER_ID_PLACEHOLDER)
    return (not suffix and prefix.startswith("user_") and prefix.endswith("_")
            and TABLE_PART.fullmatch(prefix[5:-1]) is not None)


def check_templates(templates: Sequence[str]) -> None:
    """Raise ``TemplateError`` unless every (template, user id) pair, and every name of
    relay's trigger, names a channel of its own."""
    for template in templates:
        if template.count(USER_ID_PLACEHOLDER) != 1:
            raise TemplateError(f"{template!r} must contain {USER_ID_PLACEHOLDER} exactly once")
        if not template.isprintable():
            raise TemplateError(f"{template!r}: no control characters")
        if len(template.encode()) - len(USER_ID_PLACEHOLDER) >= MAX_IDENTIFIER_BYTES:
            raise TemplateError(f"{template!r} leaves no room for a user id in "
                                f"PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte names")
    if len(set(templates)) != len(templates):
        raise TemplateError("templates must be distinct")
    collision = find_collision(templates)
    if collision is None:
        return
    (template, user), (other, other_user) = collision.first, collision.second
    if collision.table:
        raise TemplateError(
            f"{template} can name a channel of relay's row trigger: {collision.name} is user "
            f"{user!r} here, owner {other_user!r} of the trigger with --channel {other}; a "
            f"template starting user_ must be user_<Table>_{USER_ID_PLACEHOLDER} (<Table>: "
            f"letters and digits), any other needs another prefix")
    raise TemplateError(
        f"{template} and {other} can name the same channel: {collision.name} is user "
        f"{user!r} by the first, user {other_user!r} by the second (user ids may hold "
        f"letters, digits and _.@:-); change their fixed text so that no user id can fill "
        f"in the difference")


def check_table_part(table: str, templates: Sequence[str]) -> None:
    """Raise ``TemplateError`` unless the trigger's ``user_<table>_<owner>`` names collide
    with no configured template (other than being one of them)."""
    if not TABLE_PART.fullmatch(table):
        raise TemplateError(f"{table!r}: letters and digits only, starting with a letter "
                            f"(it becomes user_<Channel>_<userId>, read back up to the first "
                            f"_; an _ of its own would let user_<Channel>_<owner> name another "
                            f"user's channel)")
    own = trigger_template(table)
    shape = _template_shape(own)
    for template in templates:
        if template == own:
            continue
        name = shortest_common_name(shape, _template_shape(template))
        if name is not None:
            raise TemplateError(
                f"{table!r}: its rows for owner {user_of(own, name)!r} would go to "
                f"{name}, the channel of user {user_of(template, name)!r} by {template}")
