"""Tokens that must not open a connection although they are signed with relay's secret
(issue 14, items 10 and 12).

- **Another environment's tokens**: a Vercel preview that shares production's secret mints
  tokens production would accept; ``RELAY_JWT_ISSUER`` / ``RELAY_JWT_AUDIENCE`` make each
  relay accept only its own environment's ``iss``/``aud``, and every token relay mints
  follows them.
- **Long-lived tokens**: ``RELAY_MAX_TOKEN_LIFETIME`` caps ``exp - iat`` (a token without
  ``iat`` counts as issued as early as the cap allows).
- **Tokens in URLs**: ``RELAY_ALLOW_QUERY_TOKEN=false`` refuses ``?token=`` with 4003, which
  the bundled client takes as final, and a reason that says what to do instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest

from relay import closecodes
from relay.auth import AuthError, ForbiddenToken, issue_token, verify_token
from relay.config import ConfigError, Settings
from relay.worker.session import QUERY_TOKEN_REFUSED
from tests.support import ROOT, SECRET, RelayProcess

KEY = SECRET.encode()
BASE = {"DATABASE_URL": "postgresql://u@db.example.com/app", "WEBSOCKET_JWT_SECRET": SECRET}


def _token(lifetime: float | None, ttl: float = 3600, **claims: Any) -> str:
    """A token expiring ``ttl`` from now, issued ``lifetime`` before its expiry (no ``iat``
    when ``lifetime`` is None)."""
    now = time.time()
    body: dict[str, Any] = {"userId": "u1", "iss": "papr-app", "aud": "papr-realtime",
                            "exp": int(now + ttl), **claims}
    if lifetime is not None:
        body["iat"] = int(now + ttl - lifetime)
    return jwt.encode(body, KEY, algorithm="HS256")


# ----- issuer and audience per environment -----

def test_issuer_and_audience_default_to_the_seeds() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.jwt_issuer, settings.jwt_audience) == ("papr-app", "papr-realtime")


def test_a_token_of_another_environment_is_refused_with_the_same_secret() -> None:
    production = issue_token("42", KEY)
    preview = issue_token("42", KEY, issuer="papr-app-preview", audience="relay-preview")
    rules = {"issuer": "papr-app-preview", "audience": "relay-preview"}
    assert verify_token(preview, KEY, **rules).user_id == "42"  # type: ignore[arg-type]
    for token, reason in ((production, "wrong issuer"),
                          (issue_token("42", KEY, issuer="papr-app-preview"), "wrong audience")):
        with pytest.raises(AuthError) as refused:
            verify_token(token, KEY, **rules)  # type: ignore[arg-type]
        assert refused.value.reason == reason
    with pytest.raises(AuthError, match="wrong issuer"):
        verify_token(preview, KEY)  # production's relay: the seed's claims


@pytest.mark.parametrize("value", [" papr-app", "papr-app ", '"papr-app"', "a\tb", "x" * 257])
def test_a_claim_setting_that_would_refuse_every_token_is_refused_at_start_up(value: str
                                                                              ) -> None:
    for name in ("RELAY_JWT_ISSUER", "RELAY_JWT_AUDIENCE"):
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({**BASE, name: value})
        assert str(refused.value).startswith(f"{name}: ")
        assert "\n" not in str(refused.value)


def _relay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "WEBSOCKET_JWT_SECRET") and not k.startswith("RELAY_")}
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT,
                          env={**clean, "WEBSOCKET_JWT_SECRET": SECRET, **env},
                          capture_output=True, text=True, timeout=60)


def test_relay_token_mints_for_the_configured_issuer_and_audience() -> None:
    result = _relay_cli("token", "--user-id", "7", RELAY_JWT_ISSUER="staging-app",
                        RELAY_JWT_AUDIENCE="staging-relay")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), KEY, algorithms=["HS256"],
                        audience="staging-relay", issuer="staging-app")
    assert claims["userId"] == "7"


def test_relay_token_refuses_a_lifetime_relay_would_refuse() -> None:
    result = _relay_cli("token", "--user-id", "7", "--ttl", "7200",
                        RELAY_MAX_TOKEN_LIFETIME="3600")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "relay: token: --ttl 7200 must be positive and at most RELAY_MAX_TOKEN_LIFETIME "
        "(3600s), or relay refuses the token")


# ----- lifetime cap -----

def test_the_default_cap_admits_the_apps_one_hour_tokens() -> None:
    cap = Settings.from_env(BASE).max_token_lifetime
    assert cap >= 3600
    claims = verify_token(_token(3600), KEY, max_lifetime=cap)
    assert claims.expires_at - claims.issued_at == 3600


def test_a_token_living_longer_than_the_cap_is_forbidden() -> None:
    assert verify_token(_token(7200), KEY, max_lifetime=7200).user_id == "u1"
    with pytest.raises(ForbiddenToken) as refused:
        verify_token(_token(7201), KEY, max_lifetime=7200)
    assert refused.value.reason == "token lifetime over 7200s (RELAY_MAX_TOKEN_LIFETIME)"
    # However little of it is left: the cap is on what the app signed, not what remains.
    with pytest.raises(ForbiddenToken):
        verify_token(_token(365 * 86400, ttl=60), KEY, max_lifetime=7200)
    assert verify_token(_token(365 * 86400), KEY, max_lifetime=0).user_id == "u1"  # no cap


def test_an_iat_before_1970_is_over_any_cap() -> None:
    token = jwt.encode({"userId": "u1", "iss": "papr-app", "aud": "papr-realtime",
                        "exp": int(time.time()) + 60, "iat": -(10 ** 400)}, KEY)
    with pytest.raises(ForbiddenToken):
        verify_token(token, KEY, max_lifetime=86400)


def test_a_token_without_iat_counts_as_issued_as_early_as_the_cap_allows() -> None:
    claims = verify_token(_token(None, ttl=3600), KEY, max_lifetime=7200)
    assert claims.issued_at == claims.expires_at - 7200
    # Not before its expiry is within the cap of now: a year-long token without iat stays
    # refused until its last cap-long stretch.
    with pytest.raises(ForbiddenToken) as refused:
        verify_token(_token(None, ttl=7200 + 120), KEY, max_lifetime=7200)
    assert "without iat" in refused.value.reason
    with pytest.raises(ForbiddenToken):
        verify_token(jwt.encode({"userId": "u1", "iss": "papr-app", "aud": "papr-realtime",
                                 "exp": 10 ** 400}, KEY), KEY, max_lifetime=7200)
    # Without a cap nothing changes: a token without iat is a valid token.
    assert verify_token(_token(None, ttl=10 ** 6), KEY).issued_at == 0.0


def test_the_refusals_fit_in_a_close_frame() -> None:
    for reason in ("token lifetime over 315360000s (RELAY_MAX_TOKEN_LIFETIME)",
                   QUERY_TOKEN_REFUSED):
        assert len(reason.encode()) < 123


# ----- against a real relay -----

@pytest.fixture(scope="module")
def strict_relay(postgres_url: str, schema_installed: list[str],
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A relay of a preview environment: same secret as production, its own claims, no
    tokens in URLs, tokens of at most 2 hours."""
    process = RelayProcess(postgres_url, tmp_path_factory.mktemp("strict"), env={
        "RELAY_JWT_ISSUER": "papr-app-preview", "RELAY_JWT_AUDIENCE": "relay-preview",
        "RELAY_ALLOW_QUERY_TOKEN": "false", "RELAY_MAX_TOKEN_LIFETIME": "7200"})
    process.start()
    try:
        yield process
    finally:
        process.shut_down()


@pytest.mark.slow
def test_a_production_token_is_refused_by_the_preview_relay(strict_relay: RelayProcess) -> None:
    client = strict_relay.connect(token=issue_token("42", KEY), expect_connected=False)
    assert client.expect_close() == (4001, "wrong issuer")
    # Its own environment's token (the test helper follows the relay's settings) connects.
    assert strict_relay.connect("42").connected["userId"] == "42"


@pytest.mark.slow
def test_a_token_in_the_url_is_refused_for_good_with_what_to_do(
        strict_relay: RelayProcess) -> None:
    client = strict_relay.connect("42", via="query", expect_connected=False)
    code, reason = client.expect_close()
    assert (code, reason) == (closecodes.FORBIDDEN.code, QUERY_TOKEN_REFUSED)
    # 4003 is final for a well-behaved client: the bundled one stops instead of looping.
    assert closecodes.FORBIDDEN.reconnect == "no"
    assert "auth message" in reason
    strict_relay.connect("42", via="message").close()


@pytest.mark.slow
def test_a_token_over_the_lifetime_cap_is_refused_for_good(strict_relay: RelayProcess) -> None:
    def token(lifetime: int) -> str:
        now = int(time.time())
        return jwt.encode({"userId": "42", "iss": "papr-app-preview", "aud": "relay-preview",
                           "iat": now, "exp": now + lifetime}, KEY)

    client = strict_relay.connect(token=token(7201), expect_connected=False)
    assert client.expect_close() == (4003, "token lifetime over 7200s "
                                           "(RELAY_MAX_TOKEN_LIFETIME)")
    strict_relay.connect(token=token(7200)).close()


@pytest.mark.slow
def test_the_query_token_stays_accepted_by_default(relay: RelayProcess) -> None:
    relay.connect("42", via="query").close()
