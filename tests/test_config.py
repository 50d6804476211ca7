"""Configuration: one validated Settings; bad values stop start-up with one line naming them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.config import ConfigError, Settings
from tests.support import ROOT, SECRET

BASE = {"DATABASE_URL": "postgresql://u@127.0.0.1:5432/db", "WEBSOCKET_JWT_SECRET": SECRET}


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.port == 3000
    assert not s.allowed_origins
    assert s.channel_templates == ("user_Subscription_{userId}", "user_Usage_{userId}")
    assert s.ping_interval <= 25
    assert (s.notify_channel, s.user_channels) == ("relay", "auto")


def test_the_shared_channel_and_per_user_listen_are_read() -> None:
    s = Settings.from_env({**BASE, "RELAY_NOTIFY_CHANNEL": "relay_é\"x", "RELAY_USER_CHANNELS":
                           "LISTEN"})
    assert (s.notify_channel, s.user_channels) == ("relay_é\"x", "listen")


@pytest.mark.parametrize(("env", "variable"), [
    ({"DATABASE_URL": ""}, "DATABASE_URL"),
    ({"WEBSOCKET_JWT_SECRET": ""}, "WEBSOCKET_JWT_SECRET"),
    ({"WEBSOCKET_JWT_SECRET": "short"}, "WEBSOCKET_JWT_SECRET"),
    ({"WEBSOCKET_JWT_SECRET": "x" * 31}, "WEBSOCKET_JWT_SECRET"),
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
    ({"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"),
    ({"ALLOWED_ORIGINS": "https://app.example.com/path"}, "ALLOWED_ORIGINS"),
    ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://u:p@ep-cool-1234-pooler.eu-central-1.aws.neon.tech/db"},
     "DATABASE_URL"),
    ({"RELAY_PING_INTERVAL": "60"}, "RELAY_PING_INTERVAL"),
    ({"RELAY_DEV": "maybe"}, "RELAY_DEV"),
    ({"RELAY_CHANNELS": "user_Subscription"}, "RELAY_CHANNELS"),
    ({"RELAY_USER_CHANNELS": "sometimes"}, "RELAY_USER_CHANNELS"),
    ({"RELAY_NOTIFY_CHANNEL": "r" * 64}, "RELAY_NOTIFY_CHANNEL"),
    ({"RELAY_NOTIFY_CHANNEL": "é" * 32}, "RELAY_NOTIFY_CHANNEL"),
    ({"RELAY_HOST": "relay.example.com"}, "RELAY_HOST"),
    ({"RELAY_DEV": "1", "FLY_APP_NAME": "papr-realtime"}, "RELAY_DEV"),
    ({"RELAY_DEV": "1", "FLY_APP_NAME": "papr-realtime", "RELAY_HOST": "127.0.0.1"}, "RELAY_DEV"),
    ({"RELAY_DEV": "1", "RELAY_HOST": "0.0.0.0"}, "RELAY_DEV"),
    ({"RELAY_DEV": "1", "RELAY_HOST": "::"}, "RELAY_DEV"),
    ({"RELAY_DEV": "1", "RELAY_HOST": "192.168.1.20"}, "RELAY_DEV"),
    ({"RELAY_DEV": "1", "RELAY_HOST": "0.0.0.0",
      "RELAY_DEV_ALLOW_PUBLIC_TOKEN_MINTING": "maybe"}, "RELAY_DEV_ALLOW_PUBLIC_TOKEN_MINTING"),
])
def test_invalid_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, **env})
    assert str(info.value).startswith(variable + ":")


def test_production_binds_every_address_and_development_only_loopback() -> None:
    assert Settings.from_env(BASE).bind_address == "0.0.0.0:3000"
    assert Settings.from_env({**BASE, "RELAY_DEV": "1"}).bind_address == "127.0.0.1:3000"
    assert Settings.from_env({**BASE, "RELAY_DEV": "1", "RELAY_HOST": "::1"}
                             ).bind_address == "[::1]:3000"
    assert Settings.from_env({**BASE, "RELAY_HOST": "::", "PORT": "8080"}
                             ).bind_address == "[::]:8080"


def test_exposed_development_mode_needs_the_loud_override() -> None:
    exposed = {**BASE, "RELAY_DEV": "1", "RELAY_HOST": "0.0.0.0", "FLY_APP_NAME": "x"}
    with pytest.raises(ConfigError, match="RELAY_DEV_ALLOW_PUBLIC_TOKEN_MINTING=true"):
        Settings.from_env(exposed)
    allowed = Settings.from_env({**exposed, "RELAY_DEV_ALLOW_PUBLIC_TOKEN_MINTING": "true"})
    assert allowed.dev_mode and allowed.host == "0.0.0.0"


def test_secret_of_exactly_32_bytes_is_accepted() -> None:
    assert len(Settings.from_env({**BASE, "WEBSOCKET_JWT_SECRET": "y" * 32}).jwt_secret) == 32


def test_origins_are_normalised() -> None:
    raw = " https://App.example.com/ ,http://localhost:3000"
    s = Settings.from_env({**BASE, "ALLOWED_ORIGINS": raw})
    assert s.allowed_origins.exact == {"https://app.example.com", "http://localhost:3000"}


def test_pooler_url_message_says_use_the_direct_endpoint() -> None:
    with pytest.raises(ConfigError, match="direct endpoint"):
        Settings.from_env({**BASE, "DATABASE_URL": "postgres://u@ep-x-pooler.neon.tech/db"})


@pytest.mark.parametrize("dsn", [
    # libpq's key=value form, as Neon's console offers it under "Parameters only"
    "host=ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech dbname=neondb user=u "
    "password=p sslmode=require",
    "dbname=neondb host='ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech' user=u",
    # a list of hosts to try in turn: a pooler anywhere in it is refused
    "host=ep-direct-1.aws.neon.tech,ep-other-2-pooler.aws.neon.tech dbname=db",
    "postgresql://u:p@ep-direct-1.aws.neon.tech,ep-other-2-pooler.aws.neon.tech/db",
    # libpq reads host= from a URL's query string too, and it wins over the authority
    "postgresql://u:p@/db?host=ep-cool-1234-pooler.eu-central-1.aws.neon.tech",
])
def test_pooler_is_refused_in_every_dsn_form(dsn: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: points at a pooled endpoint"):
        Settings.from_env({**BASE, "DATABASE_URL": dsn})


@pytest.mark.parametrize("dsn", [
    "host=ep-cool-darkness-123456.us-east-2.aws.neon.tech dbname=neondb user=u sslmode=require",
    "host=/var/run/postgresql dbname=app",
    "postgresql://u@127.0.0.1:5432/db?sslmode=disable",
    "postgresql:///db?host=/tmp",
    # "-pooler" elsewhere than the endpoint's name is no pooler
    "host=db.example.com dbname=my-pooler user=u",
])
def test_direct_dsns_are_accepted(dsn: str) -> None:
    assert Settings.from_env({**BASE, "DATABASE_URL": dsn}).database_url == dsn


def test_unreadable_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "DATABASE_URL": "host=db password=hunter2 oops"})
    assert str(info.value).startswith("DATABASE_URL: not a connection string")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("env", "limit"), [
    ({}, 9900),  # 10000 slots, 1% kept for /health
    ({"RELAY_WORKER_CONNECTIONS": "20"}, 10),  # at least 10 kept
    ({"RELAY_WORKER_CONNECTIONS": "20", "RELAY_MAX_CONNECTIONS_PER_WORKER": "15"}, 15),
])
def test_worker_connection_limit_keeps_pool_slots_for_health(env: dict[str, str],
                                                             limit: int) -> None:
    assert Settings.from_env({**BASE, **env}).worker_connection_limit == limit


def test_development_logs_text_and_production_json() -> None:
    assert Settings.from_env(BASE).log_format == "json"
    assert Settings.from_env({**BASE, "RELAY_DEV": "1"}).log_format == "text"
    assert Settings.from_env({**BASE, "RELAY_DEV": "yes", "RELAY_LOG_FORMAT": "JSON"}
                             ).log_format == "json"


def test_channel_templates_are_read_in_order_and_must_be_distinct() -> None:
    s = Settings.from_env({**BASE, "RELAY_CHANNELS": " org_{userId} , feed_{userId}"})
    assert s.channel_templates == ("org_{userId}", "feed_{userId}")
    with pytest.raises(ConfigError, match="distinct"):
        Settings.from_env({**BASE, "RELAY_CHANNELS": "a_{userId},a_{userId}"})


def test_zero_is_a_valid_linger_and_history_size() -> None:
    s = Settings.from_env({**BASE, "RELAY_LINGER_SECONDS": "0", "RELAY_HISTORY_SIZE": "0"})
    assert (s.linger_seconds, s.history_size) == (0.0, 0)


def test_the_secret_is_never_in_the_settings_repr() -> None:
    assert SECRET not in repr(Settings.from_env(BASE))


def _gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env}
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    return subprocess.run(command,
                          cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_gunicorn_without_database_url_exits_with_one_line() -> None:
    result = _gunicorn({"WEBSOCKET_JWT_SECRET": SECRET})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["relay: configuration error: DATABASE_URL: required but not set"]


@pytest.mark.slow
def test_gunicorn_refuses_development_mode_on_fly_with_one_line() -> None:
    result = _gunicorn({**BASE, "RELAY_DEV": "1", "FLY_APP_NAME": "papr-realtime"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relay: configuration error: RELAY_DEV:")
    assert "mints a token for any user" in lines[0]


@pytest.mark.slow
def test_gunicorn_with_short_secret_exits_naming_it() -> None:
    result = _gunicorn({"DATABASE_URL": BASE["DATABASE_URL"], "WEBSOCKET_JWT_SECRET": "abc"})
    assert result.returncode != 0
    assert "WEBSOCKET_JWT_SECRET: must be at least 32 bytes" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
