"""verify_token's contract at its edges, without a relay: how strictly a token's three
segments are read, which reason each refusal gives, and that no claim is trusted (or even
reported on) before the signature holds. Every token here is signed by hand, as an
attacker's library would sign whatever it is given."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from relay.auth import AuthError, Claims, InvalidUserId, verify_token
from tests.support import SECRET

KEY = SECRET.encode()
NOW = int(time.time())
HEADER = b'{"alg":"HS256","typ":"JWT","kid":"k1"}'  # 38 bytes: room for padding, unused bits
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(signing_input: str, key: bytes = KEY) -> bytes:
    return hmac.new(key, signing_input.encode(), hashlib.sha256).digest()


def _body(**overrides: object) -> bytes:
    claims = {"userId": "u1", "iss": "papr-app", "aud": "papr-realtime", "exp": NOW + 3600,
              "iat": NOW}
    claims.update(overrides)
    return json.dumps({k: v for k, v in claims.items() if v is not ...}).encode()


def _signed(header: bytes = HEADER, payload: bytes | None = None, key: bytes = KEY) -> str:
    signing_input = f"{_b64(header)}.{_b64(_body() if payload is None else payload)}"
    return f"{signing_input}.{_b64(_mac(signing_input, key))}"


def _resigned(head: str, body: str) -> str:
    """Segments spelled by the caller, signed over exactly that spelling."""
    return f"{head}.{body}.{_b64(_mac(f'{head}.{body}'))}"


def _flip_unused_bit(segment: str) -> str:
    """The same bytes, spelled with a non-zero bit after the last one (not canonical)."""
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + ALPHABET[ALPHABET.index(segment[-1]) ^ 1]


def _paddable_body() -> bytes:
    """Claims whose base64url has room for padding and unused bits to flip."""
    return next(body for body in (_body(pad="x" * n) for n in range(3)) if len(body) % 3)


def _reason(token: str, key: bytes | str = KEY) -> str:
    with pytest.raises(AuthError) as refused:
        verify_token(token, key)  # type: ignore[arg-type]
    return refused.value.reason


# ----- the three segments -----

def test_a_hand_signed_token_is_accepted() -> None:
    assert verify_token(_signed(), KEY) == Claims(user_id="u1", expires_at=NOW + 3600,
                                                  issued_at=NOW)


@pytest.mark.parametrize("token", [
    _signed() + ".x",          # four segments
    _signed() + ".",           # four, the last empty
    _signed().rsplit(".", 1)[0],  # two
    _signed().split(".")[0],   # the header alone
    "..",
], ids=["four", "four, last empty", "two", "one", "three empty"])
def test_anything_but_three_segments_is_malformed(token: str) -> None:
    assert _reason(token) == "malformed token"


def test_the_header_alone_still_gets_its_algorithm_reason() -> None:
    assert _reason(_b64(b'{"alg":"none"}')) == "algorithm not allowed"


def test_complete_padding_is_accepted_in_every_segment() -> None:
    def pad(segment: str) -> str:
        assert len(segment) % 4
        return segment + "=" * (-len(segment) % 4)

    head, body = (pad(s) for s in _signed(payload=_paddable_body()).split(".")[:2])
    token = f"{head}.{body}.{pad(_b64(_mac(f'{head}.{body}')))}"  # signed as spelled
    assert verify_token(token, KEY).user_id == "u1"


@pytest.mark.parametrize("spell", [
    lambda s: s + "=" * (-len(s) % 4) + "====",  # more padding than a quantum takes
    lambda s: s + "===",                          # three
    lambda s: s + "=" if len(s) % 4 != 3 else s + "==",  # padding to no multiple of 4
    lambda s: s[:4] + "=" + s[4:],                # '=' inside
    lambda s: s + "A" * ((1 - len(s)) % 4),       # 4n+1 characters: no whole byte
    _flip_unused_bit,
    lambda s: s.replace(s[1], "+", 1),            # base64's alphabet, not base64url's
    lambda s: s[:2] + "/" + s[3:],
    lambda s: s[:5] + "!" + s[6:],
    lambda s: s[:3] + " " + s[3:],
], ids=["too much padding", "three '='", "padding to no multiple of 4", "'=' inside",
        "4n+1 characters", "non-zero unused bits", "'+'", "'/'", "'!'", "space"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["header", "payload", "signature"])
def test_a_segment_not_in_strict_base64url_is_malformed(spell: object, which: int) -> None:
    segments = _signed(payload=_paddable_body()).split(".")
    segments[which] = spell(segments[which])  # type: ignore[operator]
    # Re-signed over the new spelling where it is signed: only the spelling is wrong.
    token = (_resigned(*segments[:2]) if which < 2 else ".".join(segments))
    assert _reason(token) == "malformed token"


def test_a_loosely_spelled_header_still_gets_its_algorithm_reason() -> None:
    """relay reads alg and crit before the strictness of the spelling: '+' and '/' for '-'
    and '_', missing padding, non-zero unused bits."""
    head = base64.b64encode(b'{"alg": "none", "x": "???"}').decode().rstrip("=")
    assert "/" in head
    assert _reason(f"{head}.{_b64(_body())}.") == "algorithm not allowed"
    loose = _flip_unused_bit(_b64(b'{"alg":"HS256","crit":["exp"] }'))
    assert _reason(_resigned(loose, _b64(_body()))) == "critical header not supported"
    strict_but_for_spelling = _flip_unused_bit(_b64(HEADER))
    assert _reason(_resigned(strict_but_for_spelling, _b64(_body()))) == "malformed token"


def test_a_signature_of_the_wrong_length_is_a_bad_signature() -> None:
    head, body, signature = _signed().split(".")
    digest = _mac(f"{head}.{body}")
    for wrong in (digest[:16], digest + b"\0", b"", _mac(f"{head}.{body}", b"k" * 64)):
        assert _reason(f"{head}.{body}.{_b64(wrong)}") == "bad signature"


@pytest.mark.parametrize("header", [b"[]", b"null", b'"HS256"', b"1", b"", b"{", b"not json"])
def test_a_header_that_is_not_a_json_object_is_malformed(header: bytes) -> None:
    assert _reason(_signed(header=header)) == "malformed token"


@pytest.mark.parametrize("payload", [b"[1]", b"null", b'"u1"', b"", b"{", b"\xff"])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    assert _reason(_signed(payload=payload)) == "malformed token"


# ----- the header -----

@pytest.mark.parametrize("header", [b"{}", b'{"alg":null}', b'{"alg":"none"}',
                                    b'{"alg":"HS256 "}', b'{"alg":"HS256","alg":"HS512"}'])
def test_any_algorithm_but_hs256_is_refused(header: bytes) -> None:
    assert _reason(_signed(header=header)) == "algorithm not allowed"


def test_a_repeated_header_name_counts_its_last_value() -> None:
    assert verify_token(_signed(header=b'{"alg":"none","alg":"HS256"}'), KEY).user_id == "u1"


@pytest.mark.parametrize("crit", ["[]", '["b64"]', '"exp"', "null"])
def test_any_crit_is_refused(crit: str) -> None:
    header = f'{{"alg":"HS256","crit":{crit}}}'.encode()
    assert _reason(_signed(header=header)) == "critical header not supported"


def test_a_kid_that_is_not_a_string_is_refused() -> None:
    assert _reason(_signed(header=b'{"alg":"HS256","kid":7}')) == "invalid token"
    assert verify_token(_signed(header=b'{"alg":"HS256","kid":"7"}'), KEY).user_id == "u1"


def test_an_unencoded_payload_is_refused() -> None:
    """RFC 7797's b64=false must be declared critical, and crit is refused."""
    header = b'{"alg":"HS256","b64":false}'
    assert _reason(_signed(header=header)) == "malformed token"
    head = _b64(header)
    assert _reason(f"{head}..{_b64(_mac(head + '.'))}") == "invalid token"


# ----- the signature comes first -----

@pytest.mark.parametrize("payload", [
    _body(exp=NOW - 10), _body(iss="someone"), _body(aud=["papr-realtime"]), _body(exp=...),
    _body(exp="soon"), _body(userId=None), _body(iat=NOW + 86400), b"[1]", b"{", b"\xff",
], ids=["expired", "issuer", "audience", "no exp", "exp not a number", "userId null",
        "iat ahead", "not an object", "not JSON", "not UTF-8"])
def test_no_claim_is_read_before_the_signature_holds(payload: bytes) -> None:
    assert _reason(_signed(payload=payload, key=b"k" * 64)) == "bad signature"


# ----- the claims -----

@pytest.mark.parametrize(("overrides", "reason"), [
    ({"exp": None}, "missing claim exp"),   # a null is as missing as an absent claim
    ({"iss": None}, "missing claim iss"),
    ({"aud": None}, "missing claim aud"),
    ({"aud": ""}, "missing claim aud"),     # so is an empty audience
    ({"aud": []}, "missing claim aud"),
    ({"aud": 0}, "missing claim aud"),
    ({"userId": ...}, "missing claim userId"),
    ({"exp": str(NOW + 3600)}, "invalid exp"),  # a number in a string: refused, last
    ({"exp": "soon"}, "malformed token"),       # a string that is no number at all
    ({"exp": [NOW + 3600]}, "malformed token"),
    ({"exp": float("nan")}, "malformed token"),
    ({"exp": float("inf")}, "malformed token"),
    ({"exp": True}, "token expired"),            # true is 1
    ({"exp": NOW - 1}, "token expired"),
    ({"exp": NOW + 3600, "iss": 1}, "wrong issuer"),
    ({"exp": str(NOW + 3600), "iss": "x"}, "wrong issuer"),  # before exp's type
    ({"aud": ["papr-realtime"]}, "wrong audience"),
    ({"aud": "papr-realtime "}, "wrong audience"),
    ({"sub": 1}, "invalid token"),
    ({"jti": None}, "invalid token"),
    ({"iat": float("nan")}, "invalid iat"),
    ({"iat": None}, "invalid iat"),
    ({"iat": "yesterday"}, "invalid iat"),
    ({"iat": NOW + 120}, "issued in the future"),
    ({"nbf": "x"}, "invalid nbf"),
    ({"nbf": float("-inf")}, "invalid nbf"),
    ({"nbf": NOW + 120}, "token not yet valid"),
], ids=repr)
def test_each_claim_refusal_has_its_reason(overrides: dict[str, object], reason: str) -> None:
    assert _reason(_signed(payload=_body(**overrides))) == reason


def test_iat_and_nbf_within_the_clock_skew_are_accepted() -> None:
    assert verify_token(_signed(payload=_body(iat=NOW + 30, nbf=NOW + 30)), KEY).user_id == "u1"


def test_a_repeated_claim_counts_its_last_value() -> None:
    first_expired = f'{{"userId":"u1","iss":"papr-app","aud":"papr-realtime","exp":1,' \
                    f'"exp":{NOW + 60}}}'.encode()
    assert verify_token(_signed(payload=first_expired), KEY).expires_at == NOW + 60
    last_expired = f'{{"userId":"u1","iss":"papr-app","aud":"papr-realtime",' \
                   f'"exp":{NOW + 60},"exp":1}}'.encode()
    assert _reason(_signed(payload=last_expired)) == "token expired"


@pytest.mark.parametrize("exp", [2**64 + 1, 10**30, 10**400])
def test_an_integer_beyond_64_bits_is_read_exactly(exp: int) -> None:
    assert verify_token(_signed(payload=_body(exp=exp)), KEY).expires_at == exp


@pytest.mark.parametrize("user_id", [2**64, -(2**63) - 1, 123456789012345678901234567890])
def test_a_user_id_beyond_64_bits_keeps_every_digit(user_id: int) -> None:
    assert verify_token(_signed(payload=_body(userId=user_id)), KEY).user_id == str(user_id)


def test_a_float_exp_is_accepted_as_its_whole_seconds() -> None:
    assert verify_token(_signed(payload=_body(exp=NOW + 60.9)), KEY).expires_at == NOW + 60


def test_a_float_user_id_is_invalid_4003() -> None:
    with pytest.raises(InvalidUserId):
        verify_token(_signed(payload=_body(userId=1e3)), KEY)


@pytest.mark.parametrize("payload", [
    "\ufeff".encode() + _body(),                      # a byte-order mark
    _body(x=float("nan"), y=float("inf")),            # NaN, Infinity in an unused claim
    _body()[:-1] + b',"x":"\\ud800"}',               # a lone surrogate, escaped
    _body().decode().encode("utf-16"),                # UTF-16, as json detects it
], ids=["BOM", "NaN", "lone surrogate", "UTF-16"])
def test_json_that_python_reads_beyond_the_rfc_is_still_read(payload: bytes) -> None:
    assert verify_token(_signed(payload=payload), KEY).user_id == "u1"


def test_nesting_is_read_up_to_pythons_recursion_limit() -> None:
    nested = _body()[:-1] + b',"x":' + b"[" * 600 + b"]" * 600 + b"}"
    assert verify_token(_signed(payload=nested), KEY).user_id == "u1"
    too_deep = _body()[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert _reason(_signed(payload=too_deep)) == "malformed token"


# ----- the secret -----

def test_the_secret_may_be_text() -> None:
    assert verify_token(_signed(), SECRET).user_id == "u1"  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [
    b"",
    b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    b'{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}',
], ids=["empty", "PEM public key", "JWK"])
def test_a_secret_that_is_no_hmac_key_refuses_every_token(secret: bytes) -> None:
    assert _reason(_signed(key=secret), secret) == "invalid token"
