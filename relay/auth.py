"""Token verification: the app's short-lived HS256 JWTs, and nothing else.

Called by ``connection`` on auth and refresh, and by ``cli`` to mint development tokens.
Reasons in ``AuthError`` are short, safe to log and to put in a close frame: they never
contain the token.

Strict on purpose: the one algorithm (no ``none``, no public-key algorithm whose key could
be confused with the secret), a header's ``kid``/``jku``/``x5u`` never consulted (nothing is
ever fetched), any ``crit`` refused, ``aud`` exactly the string ``papr-realtime`` — a list,
even one containing it, is refused: the app's endpoint signs a single audience, and a token
minted for several services is not one for relay alone. ``exp`` is exact; ``iat`` and
``nbf`` tolerate ``CLOCK_SKEW`` seconds, because the app's clock, not relay's, wrote them.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass

import jwt

ISSUER = "papr-app"
AUDIENCE = "papr-realtime"
ALGORITHM = "HS256"
CLOCK_SKEW = 60  # seconds an iat or nbf may lie ahead of relay's clock


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
    if not token.isascii():  # a JWT is base64url and dots; this also makes len() its bytes
        raise AuthError("malformed token")
    header = _header(token)
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
            # iat and nbf are checked below, with the skew that PyJWT's one leeway (which
            # would also extend exp) cannot give them alone.
            options={"require": ["exp", "iss", "aud"], "strict_aud": True,
                     "verify_iat": False, "verify_nbf": False},
            leeway=0,
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"missing claim {exc.claim}") from None
    except jwt.PyJWTError as exc:
        raise AuthError(_reason(exc)) from None
    now = time.time()
    expires_at = _time_claim(claims, "exp")  # PyJWT takes "123", a string, as well
    if _time_claim(claims, "iat") > now + CLOCK_SKEW:
        raise AuthError("issued in the future")
    if _time_claim(claims, "nbf") > now + CLOCK_SKEW:
        raise AuthError("token not yet valid")
    if "userId" not in claims:
        raise AuthError("missing claim userId")
    return Claims(user_id=_user_id(claims["userId"]), expires_at=int(expires_at))


# Most specific first: several of these subclass one another.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.DecodeError, "malformed token"),  # after InvalidSignatureError, its subclass
)


def _header(token: str) -> dict[str, object]:
    """The JOSE header, read by relay itself: PyJWT would refuse a ``crit`` it does not
    know as a malformed token, which hides the reason."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.b64decode(segment + "=" * (-len(segment) % 4),
                                             altchars=b"-_", validate=True))
    except (ValueError, RecursionError):  # binascii.Error and JSONDecodeError are both
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


def _time_claim(claims: dict[str, object], name: str) -> float:
    """A NumericDate claim, or -inf when absent; anything but a finite number is refused."""
    if name not in claims:
        return -math.inf
    value = claims[name]
    # bool is an int in Python; NaN and the infinities are what json accepts beyond JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise AuthError(f"invalid {name}")
    # An int beyond a float's range still compares exactly with a float: keep it an int.
    return value


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
