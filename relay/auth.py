"""Token verification: the app's short-lived HS256 JWTs, and nothing else.

Called by ``connection`` on auth and refresh, and by ``cli`` to mint development tokens.
Reasons in ``AuthError`` are short, safe to log and to put in a close frame: they never
contain the token.

Strict on purpose: the one algorithm (no ``none``, no public-key algorithm whose key could
be confused with the secret), a header's ``kid``/``jku``/``x5u`` never consulted (nothing is
ever fetched), any ``crit`` refused, ``iss`` exactly relay's issuer and ``aud`` exactly the
string of relay's audience (``RELAY_JWT_ISSUER`` / ``RELAY_JWT_AUDIENCE``, by default
``papr-app`` / ``papr-realtime``) — a list, even one containing it, is refused: the app's
endpoint signs a single audience, and a token minted for several services is not one for
relay alone. ``exp`` is exact; ``iat`` and ``nbf`` tolerate ``CLOCK_SKEW`` seconds, because
the app's clock, not relay's, wrote them.

A token may live at most ``max_lifetime`` seconds (``RELAY_MAX_TOKEN_LIFETIME``), counted
``exp - iat`` from the app's own clock. ``iat`` is optional in RFC 7519 and PyJWT does not
add it, so a token without one is not refused for that: it is taken as issued as early as
the cap allows, ``exp - max_lifetime``, which it can only satisfy if ``exp`` is at most the
cap away from now. That bounds its use exactly as the cap bounds any other token's, and
anything that compares issue times (a revocation) sees it as the oldest it could be.

Verification is relay's own, in one pass, under the rules of the PyJWT call it replaced on
the handshake's path (``bench/verify_token.py`` measures it); PyJWT still mints tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import time
import warnings
from dataclasses import dataclass

import jwt
import jwt.algorithms
import jwt.warnings
import orjson

from relay.config import DEFAULT_JWT_AUDIENCE, DEFAULT_JWT_ISSUER

ISSUER = DEFAULT_JWT_ISSUER
AUDIENCE = DEFAULT_JWT_AUDIENCE
ALGORITHM = "HS256"
CLOCK_SKEW = 60  # seconds an iat or nbf may lie ahead of relay's clock


class AuthError(Exception):
    """The token is refused (close 4001); ``reason`` is a short, loggable word or phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForbiddenToken(AuthError):
    """The token is genuine, but relay's policy refuses it; the app's next token would be
    refused the same way, so the client must not retry (close 4003)."""


class InvalidUserId(ForbiddenToken):
    """The token is genuine but its ``userId`` cannot name channels (close 4003)."""


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: int
    # The token's iat; without one, the earliest it can have been issued under the lifetime
    # cap (exp - cap), or 0 when there is no cap.
    issued_at: float = 0.0


def verify_token(token: object, secret: bytes, max_bytes: int = 8192, *,
                 issuer: str = ISSUER, audience: str = AUDIENCE,
                 max_lifetime: float = 0.0) -> Claims:
    """Return the claims of a valid token or raise ``AuthError``/``ForbiddenToken``.

    ``max_lifetime``: the longest ``exp - iat`` accepted, in seconds (0: no cap).

    One pass over the token, every segment decoded once. The checks, their order and their
    reasons are those of the PyJWT ``decode`` call this replaced (a handshake's share of
    CPU): the header's alg and crit, the token's shape, the signature, then the claims —
    none of which is read before the signature holds.
    """
    if not isinstance(token, str) or not token:
        raise AuthError("missing token")
    if len(token) > max_bytes:
        raise AuthError("token too large")
    if not token.isascii():  # a JWT is base64url and dots; this also makes len() its bytes
        raise AuthError("malformed token")
    segments = token.split(".")
    header = _header(segments[0])
    if len(segments) != 3:
        raise AuthError("malformed token")
    signing_input, _, encoded_signature = token.rpartition(".")
    if header.get("b64", True) is False:
        # RFC 7797's unencoded payload, which must be declared in crit (refused above).
        if segments[1]:
            raise AuthError("malformed token")
        _base64url(encoded_signature)
        raise AuthError("invalid token")
    payload = _base64url(segments[1])
    signature = _base64url(encoded_signature)
    if not isinstance(header.get("kid", ""), str):  # never consulted, yet not just anything
        raise AuthError("invalid token")
    key = _hmac_key(secret)
    if key is None:
        raise AuthError("invalid token")
    expected = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise AuthError("bad signature")
    claims = _claims(payload)
    for name in ("exp", "iss", "aud"):
        if claims.get(name) is None:  # a null is as missing as an absent claim
            raise AuthError(f"missing claim {name}")
    now = time.time()
    try:
        # int() as PyJWT read exp: "123", a string, passes here (and is refused below),
        # "abc" is a malformed token, true is 1 and expired.
        expired = int(claims["exp"]) <= now  # type: ignore[call-overload]
    except (ValueError, TypeError, OverflowError):
        raise AuthError("malformed token") from None
    if expired:
        raise AuthError("token expired")
    if claims["iss"] != issuer:
        raise AuthError("wrong issuer")
    if not claims["aud"]:
        raise AuthError("missing claim aud")
    if claims["aud"] != audience:
        raise AuthError("wrong audience")
    if not isinstance(claims.get("sub", ""), str) or not isinstance(claims.get("jti", ""), str):
        raise AuthError("invalid token")
    expires_at = _time_claim(claims, "exp")
    issued_at = _time_claim(claims, "iat")
    if issued_at > now + CLOCK_SKEW:
        raise AuthError("issued in the future")
    if _time_claim(claims, "nbf") > now + CLOCK_SKEW:
        raise AuthError("token not yet valid")
    if "userId" not in claims:
        raise AuthError("missing claim userId")
    # Comparisons only, no subtraction: exp may be an integer beyond a float's range.
    if issued_at == -math.inf:
        issued = 0.0
        if max_lifetime:
            # Taken as issued at exp - max_lifetime: possible only if that is not in the
            # future (by the app's clock, which may run CLOCK_SKEW ahead).
            if expires_at > now + max_lifetime + CLOCK_SKEW:
                raise ForbiddenToken(f"token without iat expires more than "
                                     f"{max_lifetime:g}s ahead (RELAY_MAX_TOKEN_LIFETIME)")
            issued = float(expires_at) - max_lifetime
    else:
        # iat is at most now + CLOCK_SKEW here; one before 1970 makes any cap's lifetime.
        issued = float(issued_at) if issued_at > 0 else 0.0
        if max_lifetime and (issued_at <= 0 or expires_at > issued + max_lifetime):
            raise ForbiddenToken(f"token lifetime over {max_lifetime:g}s "
                                 f"(RELAY_MAX_TOKEN_LIFETIME)")
    return Claims(user_id=_user_id(claims["userId"]), expires_at=int(expires_at),
                  issued_at=issued)


def _header(segment: str) -> dict[str, object]:
    """The JOSE header, with an acceptable alg and no crit. These two come before anything
    else about the token, so that their reasons are not hidden behind "malformed token"."""
    try:
        header = _json_object(_base64url(segment))
    except AuthError:
        # relay once read the header for these two more loosely than PyJWT read the token
        # afterwards: a header only that reading accepts still gets their reasons.
        _check_header(_loose_header(segment))
        raise
    _check_header(header)
    return header


def _check_header(header: dict[str, object]) -> None:
    if header.get("alg") != ALGORITHM:
        raise AuthError("algorithm not allowed")
    if "crit" in header:
        # RFC 7515 4.1.11: we understand no extension, so a critical one must be refused.
        raise AuthError("critical header not supported")


def _loose_header(segment: str) -> dict[str, object]:
    """The header as relay read it before PyJWT did: padding optional, ``+`` and ``/``
    taken, unused bits ignored."""
    try:
        data = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_",
                                validate=True)
    except ValueError:  # binascii.Error is one
        raise AuthError("malformed token") from None
    return _json_object(data)


def _base64url(segment: str) -> bytes:
    """A segment in RFC 7515's base64url, as strictly as PyJWT took it: its alphabet only,
    the bits after the last byte zero, and ``=`` padding either absent or complete."""
    encoded = segment.encode()
    stripped = encoded.rstrip(b"=")
    padding = len(encoded) - len(stripped)
    if padding and (padding > 2 or len(encoded) % 4):
        raise AuthError("malformed token")
    try:
        data = binascii.a2b_base64(stripped.translate(_FROM_URLSAFE)
                                   + b"=" * (-len(stripped) % 4))
    except binascii.Error:
        raise AuthError("malformed token") from None
    # Decoding skips any character outside the alphabet and ignores unused bits; only the
    # one canonical spelling of these bytes encodes back to the segment.
    if binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != stripped:
        raise AuthError("malformed token")
    return data


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _json_object(data: bytes, exact: bool = False) -> dict[str, object]:
    """A JSON object, read as json (PyJWT's parser) reads it; anything else is malformed.

    orjson reads it 9x faster wherever the two agree. They disagree on what orjson refuses
    and json takes (NaN, Infinity, a BOM, lone surrogates, UTF-16 and UTF-32) and on depth
    (orjson stops at 1,024 levels, json at the recursion limit): json reads those, any
    document too long to rule the second out, and every ``exact`` one. The third difference,
    integers beyond 64 bits, is ``_claims``'s.
    """
    try:
        value = _json(data) if exact or len(data) > _ORJSON_MAX_BYTES else orjson.loads(data)
    except orjson.JSONDecodeError:
        value = _json(data)
    if not isinstance(value, dict):
        raise AuthError("malformed token")
    return value


_ORJSON_MAX_BYTES = 1024  # cannot nest past 512 levels: far below json's recursion limit


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are both
        raise AuthError("malformed token") from None


def _claims(payload: bytes) -> dict[str, object]:
    claims = _json_object(payload)
    # orjson reads an integer beyond 64 bits as a float where json keeps it exact: these
    # claims are read as numbers (or the user id's text), so read them as json did.
    if any(type(claims.get(name)) is float for name in ("exp", "iat", "nbf", "userId")):
        return _json_object(payload, exact=True)
    return claims


@functools.lru_cache(maxsize=4)
def _hmac_key(secret: bytes | str) -> bytes | None:
    """The secret as an HS256 key, or None when PyJWT would refuse it (empty, or shaped like
    a PEM, SSH, DER or JWK key), which refuses every token. Once per secret: these checks
    cost more than the rest of a verification."""
    hs256 = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    try:
        key = hs256.prepare_key(secret)
    except jwt.InvalidKeyError:
        return None
    short = hs256.check_key_length(key)
    if short:
        warnings.warn(short, jwt.warnings.InsecureKeyLengthWarning, stacklevel=3)
    return key


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


def _user_id(value: object) -> str:
    # bool is an int in Python; a JSON true is not a user id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidUserId("userId must be a string or an integer")
    text = str(value)
    if not text:
        raise InvalidUserId("empty userId")
    return text


def issue_token(user_id: str | int, secret: bytes, ttl: int = 3600, *, issuer: str = ISSUER,
                audience: str = AUDIENCE) -> str:
    """A token with exactly the claims the app's endpoint issues (``jwt.sign`` in Node)."""
    now = int(time.time())
    payload = {"userId": user_id, "iat": now, "exp": now + ttl, "iss": issuer, "aud": audience}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
