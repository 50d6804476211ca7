"""Token attacks: each refused with 4001/4003 and a logged reason; none crashes anything or
makes the listener LISTEN to a channel other than a valid user's two."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import jwt
import pytest
import websocket
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import SECRET, RelayProcess, notify, wait_for

KEY = SECRET.encode()


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {"userId": "t1", "iss": "papr-app", "aud": "papr-realtime", "exp": now + 600,
              "iat": now}
    claims.update(overrides)
    return claims


def _hs256_by_hand(claims: dict, key: bytes) -> str:
    """PyJWT refuses empty keys; an attacker's library does not."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

REFUSED_4001 = {
    "HS256 with an empty key": _hs256_by_hand(_claims(), b""),
    "HS256 with another key": jwt.encode(_claims(), b"k" * 40, algorithm="HS256"),
    "RS256": jwt.encode(_claims(), RSA_KEY, algorithm="RS256"),
    "ES256": jwt.encode(_claims(), EC_KEY, algorithm="ES256"),
    "iat far in the future": jwt.encode(_claims(iat=int(time.time()) + 86400), KEY),
    "aud as a list": jwt.encode(_claims(aud=["papr-realtime", "other"]), KEY),
    "missing aud": jwt.encode({k: v for k, v in _claims().items() if k != "aud"}, KEY),
    "token of 9 KB": jwt.encode(_claims(pad="x" * 9000), KEY),
}
REFUSED_4003 = {
    "userId object": {"a": 1},
    "userId array": ["1"],
    "userId true": True,
    "userId null": None,
    "userId float": 1.5,
    "userId huge int": 10**80,
    "userId empty": "",
    "userId 10 KB": "u" * 10000,
    "userId NUL": "a\x00b",
    "userId look-alike": "аdmin",
    "userId with quote": 'x"y',
}


@pytest.fixture(scope="module")
def tok_relay(postgres_url: str, schema_installed: list[str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(postgres_url, tmp_path_factory.mktemp("tokens"),
                         env={"RELAY_MAX_MESSAGE_BYTES": "65536",
                              "RELAY_LINGER_SECONDS": "0"})
    relay.start()
    yield relay
    relay.stop()


@pytest.mark.parametrize("via", ["message", "query"])
@pytest.mark.parametrize("name", sorted(REFUSED_4001))
def test_token_attacks_are_4001(tok_relay: RelayProcess, name: str, via: str) -> None:
    if via == "query" and len(REFUSED_4001[name]) > 8000:
        # A request line over 8 KiB never reaches the upgrade: HTTP 414.
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            tok_relay.connect(token=REFUSED_4001[name], via=via, expect_connected=False)
        assert info.value.status_code == 414
        return
    client = tok_relay.connect(token=REFUSED_4001[name], via=via, expect_connected=False)
    code, reason = client.expect_close()
    assert code == 4001 and reason


@pytest.mark.parametrize("name", sorted(REFUSED_4003))
def test_user_id_attacks_are_4003(tok_relay: RelayProcess, name: str) -> None:
    token = jwt.encode(_claims(userId=REFUSED_4003[name]), KEY)
    client = tok_relay.connect(token=token, expect_connected=False)
    # 4003 (cannot form a channel); a userId so long that the token is over
    # RELAY_MAX_TOKEN_BYTES is refused before decoding, with 4001.
    assert client.expect_close()[0] == (4001 if len(token) > 8192 else 4003)


def test_kid_jku_x5u_headers_are_ignored(tok_relay: RelayProcess) -> None:
    token = jwt.encode(_claims(userId="hdr"), KEY, headers={
        "kid": "../../etc/passwd", "jku": "http://127.0.0.1:1/keys", "x5u": "http://127.0.0.1:1/c"})
    client = tok_relay.connect(token=token)
    assert client.connected["userId"] == "hdr"
    client.close()


def test_after_every_attack_nothing_is_listened_and_service_continues(
        tok_relay: RelayProcess, postgres_url: str) -> None:
    wait_for(lambda: tok_relay.health()[1]["listener"]["channels"] == 0, 10)
    for name in REFUSED_4001:
        tok_relay.connect(token=REFUSED_4001[name], expect_connected=False).expect_close()
    _, health = tok_relay.health()
    assert health["listener"]["channels"] == 0, "a refused token made the listener LISTEN"
    client = tok_relay.connect("after-attacks")
    assert tok_relay.health()[1]["listener"]["channels"] == 2
    notify(postgres_url, "user_Usage_after-attacks", "{}")
    assert client.expect("update")["channel"] == "user_Usage_after-attacks"
    client.close()
    assert '"reason": "bad signature"' in tok_relay.logs()
