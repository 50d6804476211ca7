"""Revocation (issue 14, item 11): a signed-out or banned user stops receiving at once.

``relay_revoke(user)`` (sql/004) or ``python -m relay kick --user-id`` closes that user's
connections with 4001 on every instance, and every instance (a restarted one too) refuses
that user's tokens issued before the revocation for the rest of their lifetime, in a
refresh as in a new connection. Two real relays on one real PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import jwt
import psycopg2
import pytest

from tests.support import (
    ROOT,
    SECRET,
    RelayProcess,
    assert_marker_comes_next,
    execute,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here boots real processes

KEY = SECRET.encode()


def _token(user: str, issued_at: float, ttl: int = 3600) -> str:
    iat = int(issued_at)
    return jwt.encode({"userId": user, "iss": "papr-app", "aud": "papr-realtime", "iat": iat,
                       "exp": iat + ttl}, KEY, algorithm="HS256")


def _revoke(database_url: str, user: str) -> float:
    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch FROM relay_revoke(%s))::float8", (user,))
            return float(cursor.fetchone()[0])
    finally:
        connection.close()


def test_a_revoked_user_is_closed_on_every_instance_and_stays_out(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    one, two = relay_factory(), relay_factory()
    before = time.time() - 5
    clients = [one.connect(token=_token("banned-1", before)) for _ in range(2)]
    clients.append(two.connect(token=_token("banned-1", before)))
    # Another user, whose id starts the same way, on both instances.
    bystanders = [one.connect("banned-10"), two.connect("banned-10")]

    started = time.monotonic()
    revoked_at = _revoke(postgres_url, "banned-1")
    closes = [client.expect_close(timeout=5) for client in clients]
    elapsed = time.monotonic() - started
    assert closes == [(4001, "token revoked")] * 3
    print(f"revocation to the last close on two instances: {elapsed * 1000:.0f} ms")
    assert_marker_comes_next(postgres_url, *bystanders)

    # Tokens issued before the revocation are refused by both, even a fresh-looking one...
    for relay in (one, two):
        refused = relay.connect(token=_token("banned-1", revoked_at - 1),
                                expect_connected=False)
        assert refused.expect_close() == (4001, "token revoked")
    # ...and a token issued after it (the user signed in again) is accepted.
    again = _token("banned-1", revoked_at + 1)
    assert one.connect(token=again).connected["userId"] == "banned-1"
    assert two.connect(token=again).connected["userId"] == "banned-1"


def test_a_restarted_instance_still_refuses_the_revoked_tokens(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    before = time.time() - 5
    revoked_at = _revoke(postgres_url, "banned-2")
    relay = relay_factory()  # started after the revocation: it reads the database
    refused = relay.connect(token=_token("banned-2", before), expect_connected=False)
    assert refused.expect_close() == (4001, "token revoked")
    relay.connect(token=_token("banned-2", revoked_at + 1)).close()
    # A listener restart (the supervisor starts a new one) reads it again, too.
    listener = relay.listener_pids()[0]
    os.kill(listener, 9)
    wait_for(lambda: relay.listener_pids() and relay.listener_pids()[0] != listener, 15)
    wait_for(lambda: relay.fresh_health()[1].get("listener", {}).get("workers") == 2, 15)
    refused = relay.connect(token=_token("banned-2", before), expect_connected=False)
    assert refused.expect_close() == (4001, "token revoked")


def test_a_refresh_with_a_revoked_token_is_refused(
        relay_factory: Callable[..., RelayProcess], postgres_url: str) -> None:
    relay = relay_factory()
    before = time.time() - 5
    revoked_at = _revoke(postgres_url, "banned-3")
    client = relay.connect(token=_token("banned-3", revoked_at + 1))
    client.send({"type": "refresh", "token": _token("banned-3", before)})
    assert client.expect_close() == (4001, "refresh: token revoked")


def test_relay_kick_revokes_in_one_line(relay_factory: Callable[..., RelayProcess],
                                        postgres_url: str) -> None:
    relay = relay_factory()
    client = relay.connect(token=_token("banned-4", time.time() - 5))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    result = subprocess.run([sys.executable, "-m", "relay", "kick", "--user-id", "banned-4"],
                            cwd=ROOT, env={**env, "DATABASE_URL": postgres_url},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("revoked user banned-4 at ")
    assert client.expect_close() == (4001, "token revoked")


def test_relay_kick_without_relays_sql_says_what_to_run(empty_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    result = subprocess.run([sys.executable, "-m", "relay", "kick", "--user-id", "x"],
                            cwd=ROOT, env={**env, "DATABASE_URL": empty_database},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == ("relay: kick: relay_revoke() is not installed in this "
                                     "database: run python -m relay db install first")


def test_relay_revoke_refuses_a_bad_user_id_and_keeps_the_latest_time(
        postgres_url: str, schema_installed: list[str]) -> None:
    for bad in ("", "a\nb", "x" * 256):
        with pytest.raises(psycopg2.Error, match="relay_revoke: a user id"):
            _revoke(postgres_url, bad)
    first = _revoke(postgres_url, "banned-5")
    second = _revoke(postgres_url, "banned-5")
    assert second >= first
    execute(postgres_url, "UPDATE relay.revocations SET revoked_at = now() + interval '1 hour' "
                          "WHERE user_id = 'banned-5'")
    assert _revoke(postgres_url, "banned-5") > second + 3000  # never moved back
