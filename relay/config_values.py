"""Reading and checking one setting's value: the parsers behind ``Settings.from_env``.

Each function takes the raw text of one variable (or, for ``Reader``, the environment
mapping it is handed: this module never reads ``os.environ`` itself) and returns the value or
raises a ``ConfigError`` whose message names the variable. relay/config.py assembles them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from relay.channels import TemplateError, check_templates
from relay.origins import OriginError, OriginPolicy, parse_origins

DEFAULT_CHANNEL_TEMPLATES = ("user_Subscription_{userId}", "user_Usage_{userId}")


class ConfigError(ValueError):
    """A missing or invalid setting; ``str()`` is the one line to print at start-up."""


# Development mode serves /demo/token, which mints a token for any user id: anybody who can
# reach the port can log in as anybody. It runs only on a loopback address and never on Fly,
# unless this loudly named variable says the operator means it.
DEV_OVERRIDE = "RELAY_DEV_ALLOW_PUBLIC_TOKEN_MINTING"


def refuse_exposed_dev_mode(host: str, on_fly: bool) -> None:
    if on_fly:
        where, fix = "on Fly.io (FLY_APP_NAME is set)", "unset RELAY_DEV"
    elif not is_loopback(host):
        where = f"bound to {host}, which is not a loopback address"
        fix = "bind RELAY_HOST=127.0.0.1"
    else:
        return
    raise ConfigError(
        f"RELAY_DEV: development mode serves /demo/token, which mints a token for any user; "
        f"refusing to run it {where}: {fix}, or set {DEV_OVERRIDE}=true if anyone who can "
        f"reach this port may log in as anyone"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    return ipaddress.ip_address(host).is_loopback


def host(raw: str) -> str:
    if raw == "localhost":
        return raw
    try:
        return str(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"RELAY_HOST: expected an IP address to bind (0.0.0.0, 127.0.0.1, ::), got {raw!r}"
        ) from None


class Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def required(self, name: str) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            raise ConfigError(f"{name}: required but not set")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return int(self._ranged(name, default, low, high, int, "a whole number"))

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return float(self._ranged(name, default, low, high, float, "a number of seconds"))

    def _ranged(self, name: str, default: float, low: float, high: float,
                convert: type[int] | type[float], kind: str) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = convert(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in allowed:
            raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {raw!r}")
        return raw


def check_database_url(url: str) -> None:
    from psycopg2.extensions import parse_dsn  # here: the listener patches gevent first

    if "://" in url:
        scheme = urlsplit(url).scheme
        if scheme not in ("postgres", "postgresql"):
            raise ConfigError(
                f"DATABASE_URL: expected a postgresql:// URL, got scheme {scheme!r}")
    try:
        params = parse_dsn(url)  # a URL or libpq's key=value form, e.g. host=… dbname=…
    except Exception:  # psycopg2.ProgrammingError; its text may quote the password
        raise ConfigError("DATABASE_URL: not a connection string libpq can read (expected "
                          "postgresql://user:password@host/db or host=… dbname=… pairs)"
                          ) from None
    hosts = params.get("host", "").split(",")  # libpq takes a list of hosts to try in turn
    if any("-pooler" in host.strip().split(".")[0] for host in hosts):
        raise ConfigError(
            "DATABASE_URL: points at a pooled endpoint (-pooler); LISTEN never receives "
            "notifications through PgBouncer in transaction mode. Use the direct endpoint "
            "(the host without -pooler; on Vercel's Neon integration, DATABASE_URL_UNPOOLED)."
        )


_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, with the final NUL


def socket_path(raw: str) -> str:
    """``RELAY_SOCKET_PATH``; empty means: the gunicorn master creates a private one."""
    if raw and len(os.fsencode(raw)) > _SUN_PATH_MAX:
        raise ConfigError(f"RELAY_SOCKET_PATH: longer than {_SUN_PATH_MAX} bytes, the most a "
                          f"Unix socket path may have")
    return raw


def origins(raw: str) -> OriginPolicy:
    try:
        return parse_origins(raw)
    except OriginError as exc:
        raise ConfigError(f"ALLOWED_ORIGINS: {exc}") from None


def templates(raw: str) -> tuple[str, ...]:
    if not raw.strip():
        return DEFAULT_CHANNEL_TEMPLATES
    templates = tuple(t.strip() for t in raw.split(",") if t.strip())
    try:
        check_templates(templates)  # no two users, nor a user and a trigger, share a name
    except TemplateError as exc:
        raise ConfigError(f"RELAY_CHANNELS: {exc}") from None
    return templates
