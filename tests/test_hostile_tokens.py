"""Token attacks on a real relay: each refused with 4001 or 4003 and the reason both in the
close frame and in a log line; none crashes a worker or the listener, leaks the token to a
log, or makes the listener LISTEN to anything but a valid user's two channels.

``aud`` as a list is refused, even a list holding ``papr-realtime`` (see relay/auth.py):
the app's endpoint signs one audience, and a token for several services is not relay's.
A token over 8 KiB is refused from its size (4001) in an auth message, and with HTTP 414
before any upgrade in ``?token=`` (gevent's request-line limit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import websocket
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import SECRET, RelayProcess, database_connections, notify, wait_for

pytestmark = pytest.mark.slow  # every test here boots real processes

KEY = SECRET.encode()
NOW = int(time.time())
HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, Any]:
    claims: dict[str, Any] = {"userId": "t1", "iss": "papr-app", "aud": "papr-realtime",
                              "exp": NOW + 3600, "iat": NOW}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def _signed(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes,
            key: bytes = KEY) -> str:
    """HS256 by hand: an attacker's library signs whatever header and body it is given
    (PyJWT refuses empty keys, unknown algorithm names, non-object bodies)."""
    head = _b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    body = _b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # our secret is short for HS512: that is the point
        warnings.simplefilter("ignore")
        return jwt.encode(claims, KEY, algorithm="HS512")


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
_VALID = _signed(HEADER, _claims())
_UNSIGNED = _b64(json.dumps({"alg": "none"}).encode()) + "." + _VALID.split(".")[1] + "."
PIDS_AT_START: list[tuple[list[int], list[int]]] = []  # (workers, listener) of tok_relay

# name → (token, the reason relay gives in the close frame and the log)
REFUSED_4001: dict[str, tuple[str, str]] = {
    "alg none": (_UNSIGNED, "algorithm not allowed"),
    "alg none, HMAC-signed": (_signed({"alg": "none"}, _claims()), "algorithm not allowed"),
    "alg hs256 (lower case)": (_signed({"alg": "hs256"}, _claims()), "algorithm not allowed"),
    "alg as a list": (_signed({"alg": ["HS256"]}, _claims()), "algorithm not allowed"),
    "HS512": (_hs512(_claims()), "algorithm not allowed"),
    "RS256": (jwt.encode(_claims(), RSA_KEY, algorithm="RS256"), "algorithm not allowed"),
    "PS256": (jwt.encode(_claims(), RSA_KEY, algorithm="PS256"), "algorithm not allowed"),
    "ES256": (jwt.encode(_claims(), EC_KEY, algorithm="ES256"), "algorithm not allowed"),
    "HS256 with an empty key": (_signed(HEADER, _claims(), b""), "bad signature"),
    "HS256 with another key": (jwt.encode(_claims(), b"k" * 40), "bad signature"),
    "signature stripped": (_VALID.rsplit(".", 1)[0] + ".", "bad signature"),
    "body swapped under a valid signature": (
        ".".join((_VALID.split(".")[0], _b64(json.dumps(_claims(userId="admin")).encode()),
                  _VALID.split(".")[2])), "bad signature"),
    "crit header": (_signed({**HEADER, "crit": ["exp"]}, _claims()),
                    "critical header not supported"),
    "expired": (jwt.encode(_claims(exp=NOW - 5), KEY), "token expired"),
    "exp as a string": (_signed(HEADER, _claims(exp=str(NOW + 3600))), "invalid exp"),
    "exp missing": (jwt.encode(_claims(exp=...), KEY), "missing claim exp"),
    "nbf in the future": (jwt.encode(_claims(nbf=NOW + 600), KEY), "token not yet valid"),
    "iat far in the future": (jwt.encode(_claims(iat=NOW + 86400), KEY),
                              "issued in the future"),
    "iat not a number": (jwt.encode(_claims(iat="yesterday"), KEY), "invalid iat"),
    "iss wrong": (jwt.encode(_claims(iss="papr-app-evil"), KEY), "wrong issuer"),
    "iss missing": (jwt.encode(_claims(iss=...), KEY), "missing claim iss"),
    "aud wrong": (jwt.encode(_claims(aud="papr-realtime-x"), KEY), "wrong audience"),
    "aud missing": (jwt.encode(_claims(aud=...), KEY), "missing claim aud"),
    "aud as a list with ours": (jwt.encode(_claims(aud=["papr-realtime", "other"]), KEY),
                                "wrong audience"),
    "aud as a list of ours only": (jwt.encode(_claims(aud=["papr-realtime"]), KEY),
                                   "wrong audience"),
    "userId missing": (jwt.encode(_claims(userId=...), KEY), "missing claim userId"),
    "header not an object": (_signed(b"[]", _claims()), "malformed token"),
    "body not an object": (_signed(HEADER, b"[1]"), "malformed token"),
    "four segments": (_VALID + ".x", "malformed token"),
    "not base64": ("not.a.token!", "malformed token"),
    "non-ASCII": (_VALID + "é", "malformed token"),
    "token of 9 KB": (jwt.encode(_claims(pad="x" * 9000), KEY), "token too large"),
}
# userId values that cannot name a channel: 4003 (a genuine token, a user relay refuses).
REFUSED_4003: dict[str, object] = {
    "object": {"a": 1},
    "array": ["1"],
    "true": True,
    "false": False,
    "null": None,
    "float": 1.5,
    "float that is whole": 42.0,
    "huge int": 10**80,
    "empty string": "",
    "NUL": "a\x00b",
    "newline": "a\nb",
    "space": "a b",
    "quote": 'x"y',
    "SQL": "1\"; LISTEN x; --",
    "Cyrillic look-alike": "аdmin",
    "fullwidth digits": "４２",
    "too long for a channel": "u" * 60,
}
REFUSED_BY_SIZE = {"10 KB string": "u" * 10000}  # the token is over 8 KiB: 4001 first


@pytest.fixture(scope="module")
def tok_relay(postgres_url: str, schema_installed: list[str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("tokens"),
                         env={"RELAY_MAX_MESSAGE_BYTES": "65536",  # room for 9 KB tokens
                              "RELAY_LINGER_SECONDS": "0"})  # UNLISTEN at once
    relay.start()
    PIDS_AT_START.append((relay.worker_pids(), relay.listener_pids()))
    yield relay
    relay.shut_down()


@pytest.mark.parametrize("via", ["message", "query"])
@pytest.mark.parametrize("name", list(REFUSED_4001))
def test_token_attack_is_refused_4001_with_its_reason(tok_relay: RelayProcess, name: str,
                                                      via: str) -> None:
    token, reason = REFUSED_4001[name]
    if via == "query" and len(token) > 8000:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            tok_relay.connect(token=token, via=via, expect_connected=False)
        assert info.value.status_code == 414  # request line over 8 KiB: no upgrade at all
        return
    client = tok_relay.connect(token=token, via=via, expect_connected=False)
    assert client.expect_close() == (4001, reason)


@pytest.mark.parametrize("name", list(REFUSED_4003) + list(REFUSED_BY_SIZE))
def test_user_id_attack_is_refused_4003(tok_relay: RelayProcess, name: str) -> None:
    user_id = REFUSED_4003.get(name, REFUSED_BY_SIZE.get(name))
    client = tok_relay.connect(token=jwt.encode(_claims(userId=user_id), KEY),
                               expect_connected=False)
    code, reason = client.expect_close()
    if name in REFUSED_BY_SIZE:
        assert (code, reason) == (4001, "token too large")
    else:
        assert code == 4003 and reason.startswith(("userId", "empty userId"))


@pytest.mark.parametrize("token", [None, 42, ["a.b.c"], {"t": 1}, ""], ids=repr)
def test_auth_message_without_a_string_token_is_4001(tok_relay: RelayProcess,
                                                     token: object) -> None:
    client = tok_relay.connect(authenticate=False, expect_connected=False)
    client.send({"type": "auth", "token": token})
    assert client.expect_close() == (4001, "missing token")


@pytest.mark.parametrize("raw", ['"\\ud800"', '"a.b\\udfff.c"', '"\\u0000"'])
def test_token_with_a_lone_surrogate_or_nul_is_malformed(tok_relay: RelayProcess,
                                                         raw: str) -> None:
    """JSON can escape a lone surrogate, which Python cannot encode to UTF-8: PyJWT raised
    UnicodeEncodeError on it, and the connection ended 1011 with a traceback."""
    client = tok_relay.connect(authenticate=False, expect_connected=False)
    client.send('{"type": "auth", "token": ' + raw + '}')
    assert client.expect_close() == (4001, "malformed token")


@pytest.mark.parametrize("name", ["alg none", "expired", "HS256 with another key",
                                  "aud as a list of ours only"])
def test_refresh_with_an_attack_token_is_4001(tok_relay: RelayProcess, name: str) -> None:
    client = tok_relay.connect("t1")
    token, reason = REFUSED_4001[name]
    client.send({"type": "refresh", "token": token})
    assert client.expect_close() == (4001, f"refresh: {reason}")


def test_iat_a_little_ahead_of_relays_clock_is_accepted(tok_relay: RelayProcess) -> None:
    """The app's clock signs iat: 30 s of skew must not refuse a fresh token."""
    ahead = int(time.time()) + 30
    client = tok_relay.connect(token=jwt.encode(_claims(userId="skew", iat=ahead, nbf=ahead),
                                                KEY))
    assert client.connected["userId"] == "skew"
    client.close()


def test_kid_jku_x5u_jwk_headers_are_ignored_and_never_fetched(tok_relay: RelayProcess) -> None:
    trap = socket.create_server(("127.0.0.1", 0))
    trap.settimeout(1.0)
    url = f"http://127.0.0.1:{trap.getsockname()[1]}/keys"
    token = jwt.encode(_claims(userId="hdr"), KEY, headers={
        "kid": "../../etc/passwd", "jku": url, "x5u": url,
        "jwk": {"kty": "oct", "k": _b64(b"attacker")}})
    try:
        client = tok_relay.connect(token=token)
        assert client.connected["userId"] == "hdr"
        client.close()
        with pytest.raises(TimeoutError):
            trap.accept()  # nobody came for the keys
    finally:
        trap.close()


def test_after_every_attack_nothing_is_listened_nothing_crashed_nothing_leaked(
        tok_relay: RelayProcess, postgres_url: str) -> None:
    wait_for(lambda: tok_relay.health()[1]["listener"]["channels"] == 0, 10,
             message="the listener to UNLISTEN the earlier tests' channels")
    for token, _ in REFUSED_4001.values():
        tok_relay.connect(token=token, expect_connected=False).expect_close()
    for user_id in REFUSED_4003.values():
        tok_relay.connect(token=jwt.encode(_claims(userId=user_id), KEY),
                          expect_connected=False).expect_close()
    status, health = tok_relay.fresh_health()
    assert status == 200 and health["listener"]["channels"] == 0, \
        "a refused token made the listener open a channel"
    assert database_connections(postgres_url) == 1
    assert [(tok_relay.worker_pids(), tok_relay.listener_pids())] == PIDS_AT_START

    client = tok_relay.connect("after-attacks")
    wait_for(lambda: tok_relay.health()[1]["listener"]["channels"] == 2, 10)
    notify(postgres_url, "user_Usage_after-attacks", "{}")
    assert client.expect("update")["channel"] == "user_Usage_after-attacks"
    client.close()

    logs = tok_relay.logs()
    for _, reason in REFUSED_4001.values():
        assert f'"reason": "{reason}"' in logs, f"no log line gives the reason {reason!r}"
    for token, _ in REFUSED_4001.values():
        signature = token.rsplit(".", 1)[-1]
        assert token[:60] not in logs and (len(signature) < 20 or signature not in logs), \
            "a token reached a log line"
    assert "Traceback" not in logs
