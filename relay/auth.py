"""Token verification: the app's short-lived HS256 JWTs, and nothing else.

Called by ``connection`` on auth and refresh, and by ``cli`` to mint development tokens.
Reasons in ``AuthError`` are short, safe to log and to put in a close frame: they never
contain the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ISSUER = "papr-app"
AUDIENCE = "papr-realtime"
ALGORITHM = "HS256"


class AuthError(Exception):
    """The token is refused (close 4001); ``reason`` is a short, loggable word or phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUserId(AuthError):
    """The token is genuine but its ``userId`` cannot name channels (close 4003)."""


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: int


def verify_token(token: object, secret: bytes, max_bytes: int = 8192) -> Claims:
    """Return the claims of a valid token or raise ``AuthError``/``InvalidUserId``."""
    if not isinstance(token, str) or not token:
        raise AuthError("missing token")
    if len(token) > max_bytes:
        raise AuthError("token too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise AuthError("algorithm not allowed")
    if "crit" in header:
        # RFC 7515 4.1.11: we understand no extension, so a critical one must be refused.
        raise AuthError("critical header not supported")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": ["exp", "iss", "aud"], "strict_aud": True},
            leeway=0,
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"missing claim {exc.claim}") from None
    except jwt.PyJWTError as exc:
        raise AuthError(_reason(exc)) from None
    iat = claims.get("iat")
    if isinstance(iat, (int, float)) and iat > time.time() + 60:
        raise AuthError("issued in the future")
    if "userId" not in claims:
        raise AuthError("missing claim userId")
    return Claims(user_id=_user_id(claims["userId"]), expires_at=int(claims["exp"]))


# Most specific first: several of these subclass one another.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuedAtError, "issued in the future"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    return next((text for kind, text in _REASONS if isinstance(exc, kind)), "invalid token")


def _user_id(value: object) -> str:
    # bool is an int in Python; a JSON true is not a user id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidUserId("userId must be a string or an integer")
    text = str(value)
    if not text:
        raise InvalidUserId("empty userId")
    return text


def issue_token(user_id: str | int, secret: bytes, ttl: int = 3600) -> str:
    """A token with exactly the claims the app's endpoint issues (``jwt.sign`` in Node)."""
    now = int(time.time())
    payload = {"userId": user_id, "iat": now, "exp": now + ttl, "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
