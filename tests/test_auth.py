"""Authentication: only the app's HS256 tokens open a connection; every refusal is 4001/4003
on the wire, and a refused client never receives an update."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from relay.auth import AuthError, InvalidUserId, issue_token, verify_token
from tests.support import SECRET, RelayProcess, notify

KEY = SECRET.encode()


def _token(claims: dict, key: bytes | str = KEY, algorithm: str = "HS256",
           headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {"userId": "7", "iss": "papr-app", "aud": "papr-realtime", "exp": now + 600,
              "iat": now}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


REJECTED = {
    "expired": _token(_claims(exp=int(time.time()) - 10)),
    "wrong issuer": _token(_claims(iss="someone-else")),
    "wrong audience": _token(_claims(aud="another-service")),
    "bad signature": _token(_claims(), key=b"a-different-secret-that-is-long-enough!!"),
    "alg none": _unsigned(_claims()),
    "HS512": _token(_claims(), algorithm="HS512"),
    "missing userId": _token(_claims(userId=None)),
    "missing exp": _token(_claims(exp=None)),
    "missing iss": _token(_claims(iss=None)),
    "garbage": "not.a.token",
    "empty": "",
    "nbf in the future": _token(_claims(nbf=int(time.time()) + 600)),
    "crit header": _token(_claims(), headers={"crit": ["exp"]}),
}


def test_valid_token_gives_claims() -> None:
    claims = verify_token(issue_token(42, KEY), KEY)
    assert claims.user_id == "42"
    assert claims.expires_at > time.time()


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_tokens_raise(case: str) -> None:
    with pytest.raises(AuthError):
        verify_token(REJECTED[case], KEY)


@pytest.mark.parametrize("user_id", [True, None, 1.5, [], {}, ""])
def test_user_id_of_the_wrong_type_is_invalid(user_id: object) -> None:
    token = _token({**_claims(), "userId": user_id})
    with pytest.raises(InvalidUserId):
        verify_token(token, KEY)


def test_oversized_token_is_refused_before_decoding() -> None:
    with pytest.raises(AuthError, match="too large"):
        verify_token("x" * 9000, KEY)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REJECTED))
@pytest.mark.parametrize("via", ["message", "query"])
def test_rejected_token_is_closed_with_4001_on_the_wire(relay: RelayProcess, postgres_url: str,
                                                        case: str, via: str) -> None:
    client = relay.connect(token=REJECTED[case], via=via, expect_connected=False)
    notify(postgres_url, "user_Subscription_7", '{"leak": true}')
    code, reason = client.expect_close()
    assert code == 4001, (code, reason)
    assert reason
    assert not [m for m in client.received if m.get("type") == "update"]


@pytest.mark.slow
def test_first_message_other_than_auth_is_4001(relay: RelayProcess) -> None:
    client = relay.connect(authenticate=False, expect_connected=False)
    client.send({"type": "pong"})
    assert client.expect_close()[0] == 4001


@pytest.mark.slow
def test_token_signed_like_the_apps_endpoint_is_accepted(relay: RelayProcess) -> None:
    # Exactly the claims of jwt.sign({userId}, secret, {issuer, audience, expiresIn: '1h'}).
    now = int(time.time())
    token = jwt.encode({"userId": "node-user", "iat": now, "exp": now + 3600,
                        "iss": "papr-app", "aud": "papr-realtime"}, KEY, algorithm="HS256")
    client = relay.connect(token=token)
    assert client.connected["userId"] == "node-user"
    client.close()


@pytest.mark.slow
def test_integer_user_id_is_used_as_a_string(relay: RelayProcess) -> None:
    client = relay.connect(token=_token(_claims(userId=12345)))
    assert client.connected["userId"] == "12345"
    assert client.connected["channels"] == ["user_Subscription_12345", "user_Usage_12345"]
    client.close()
