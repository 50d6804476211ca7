"""One validated settings object built from the environment.

Nothing else in relay reads ``os.environ``: gunicorn.conf.py, the listener, the workers and
the CLI all build a ``Settings`` with ``Settings.from_env()`` and fail fast with a
``ConfigError`` whose message names the variable; the tools that need one variable alone
read it with the functions below, and a child process's environment comes from
``child_environment``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay import config_values as values
from relay.config_values import DEFAULT_CHANNEL_TEMPLATES, DEV_OVERRIDE, ConfigError
from relay.origins import OriginPolicy

MIN_SECRET_BYTES = 32
# The seed's claims: what the app's token endpoint signs (jwt.sign(…, { issuer, audience })).
DEFAULT_JWT_ISSUER = "papr-app"
DEFAULT_JWT_AUDIENCE = "papr-realtime"
# The app's tokens live an hour; a day leaves room for apps that choose a few hours, and still
# refuses the "valid for a year" token a bug or a shortcut mints, which a leak keeps useful.
DEFAULT_MAX_TOKEN_LIFETIME = 86400.0
DEFAULT_NOTIFY_CHANNEL = "relay"
# RELAY_USER_CHANNELS: LISTEN each connected user's channels too (listen), never (off), or
# while the database has none of relay's objects (auto). The shared channel is always heard.
USER_CHANNEL_MODES = ("auto", "listen", "off")


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: bytes = field(repr=False)
    jwt_issuer: str = DEFAULT_JWT_ISSUER
    jwt_audience: str = DEFAULT_JWT_AUDIENCE
    max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME  # 0 = no cap
    allow_query_token: bool = True
    port: int = 3000
    # A second port served by the same workers with /health and /metrics only (0 = none): its
    # accept queue and its pool are its own, so a reconnect storm that fills the main port's
    # cannot keep a health check or a scrape waiting (Centrifugo's internal_port).
    internal_port: int = 0
    host: str = "0.0.0.0"
    allowed_origins: OriginPolicy = OriginPolicy()
    web_concurrency: int = 2
    worker_connections: int = 10000
    # Handshakes (and HTTP requests) a worker serves at once: gunicorn's gevent pool. More
    # wait in the kernel's accept queue, where they cost the worker nothing.
    handshake_concurrency: int = 256
    socket_path: str = ""  # "" until the gunicorn master has chosen a private one
    channel_templates: tuple[str, ...] = DEFAULT_CHANNEL_TEMPLATES
    notify_channel: str = DEFAULT_NOTIFY_CHANNEL
    user_channels: str = "auto"
    auth_timeout: float = 10.0
    handshake_timeout: float = 10.0
    ping_interval: float = 20.0
    pong_timeout: float = 20.0
    token_refresh_window: float = 60.0
    max_message_bytes: int = 16384
    max_token_bytes: int = 8192
    client_msg_rate: float = 10.0
    queue_max_messages: int = 1000
    queue_max_bytes: int = 1 << 20
    max_connections_per_user: int = 50
    max_connections_per_worker: int = 0  # 0 = worker_connections minus headroom
    max_pending_connections: int = 0  # 0 = derived from the worker's limit
    max_pending_per_address: int = -1  # -1 = derived; 0 = no per-address limit
    resume_rate: float = 1.0
    resume_burst: int = 10
    behind_fly_proxy: bool = False  # FLY_APP_NAME is set: Fly-Client-IP is Fly's to set
    linger_seconds: float = 60.0
    history_size: int = 100
    history_ttl: float = 300.0
    history_max_bytes: int = 64 << 20
    drain_seconds: float = 10.0
    worker_timeout: float = 30.0  # gunicorn kills a worker whose loop stalls this long
    # A silent database is noticed within interval + timeout (8 s; issue 3 asks for 10).
    db_check_interval: float = 4.0
    db_check_timeout: float = 4.0
    reconnect_max_delay: float = 10.0
    dev_mode: bool = False
    log_format: str = "json"
    log_level: str = "info"
    metrics_token: str = field(default="", repr=False)

    @property
    def worker_connection_limit(self) -> int:
        """WebSockets a worker accepts before answering 1013; leaves file descriptors for
        /health and handshakes under way."""
        if self.max_connections_per_worker:
            return self.max_connections_per_worker
        return max(1, self.worker_connections - max(10, self.worker_connections // 100))

    @property
    def pending_connection_limit(self) -> int:
        """Unauthenticated connections a worker holds at once: a tenth of its limit (at
        least 16, and always below the limit, so that authenticated users keep room)."""
        if self.max_pending_connections:
            return self.max_pending_connections
        limit = self.worker_connection_limit
        return max(1, min(limit - 1, max(16, limit // 10)))

    @property
    def pending_per_address_limit(self) -> int:
        """Unauthenticated connections one client address holds on a worker: a quarter of the
        pending room, between 8 and 128 (0: no limit)."""
        if self.max_pending_per_address >= 0:
            return self.max_pending_per_address
        pending = self.pending_connection_limit
        return min(pending, max(8, min(128, pending // 4)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = values.Reader(env)
        database_url = read_database_url(env)
        secret = read_jwt_secret(env)
        dev_mode = reader.boolean("RELAY_DEV", False)
        issuer, audience = read_token_claims(env)
        settings = cls(
            database_url=database_url,
            jwt_secret=secret,
            jwt_issuer=issuer,
            jwt_audience=audience,
            max_token_lifetime=read_max_token_lifetime(env),
            allow_query_token=reader.boolean("RELAY_ALLOW_QUERY_TOKEN", True),
            port=reader.integer("PORT", 3000, 1, 65535),
            internal_port=reader.integer("RELAY_INTERNAL_PORT", 0, 0, 65535),
            host=values.host(env.get("RELAY_HOST", "").strip() or (
                "127.0.0.1" if dev_mode else "0.0.0.0")),
            allowed_origins=values.origins(env.get("ALLOWED_ORIGINS", "")),
            web_concurrency=reader.integer("WEB_CONCURRENCY", os.cpu_count() or 1, 1, 256),
            worker_connections=reader.integer("RELAY_WORKER_CONNECTIONS", 10000, 10, 1_000_000),
            handshake_concurrency=reader.integer("RELAY_HANDSHAKE_CONCURRENCY", 256, 1, 100_000),
            socket_path=values.socket_path(env.get("RELAY_SOCKET_PATH", "").strip()),
            channel_templates=values.templates(env.get("RELAY_CHANNELS", "")),
            notify_channel=read_notify_channel(env),
            user_channels=reader.choice("RELAY_USER_CHANNELS", "auto", USER_CHANNEL_MODES),
            auth_timeout=reader.number("RELAY_AUTH_TIMEOUT", 10.0, 0.1, 300),
            handshake_timeout=reader.number("RELAY_HANDSHAKE_TIMEOUT", 10.0, 0.1, 300),
            ping_interval=reader.number("RELAY_PING_INTERVAL", 20.0, 0.1, 25),
            pong_timeout=reader.number("RELAY_PONG_TIMEOUT", 20.0, 0.1, 600),
            token_refresh_window=reader.number("RELAY_TOKEN_REFRESH_WINDOW", 60.0, 0, 3600),
            max_message_bytes=reader.integer("RELAY_MAX_MESSAGE_BYTES", 16384, 256, 1 << 24),
            max_token_bytes=reader.integer("RELAY_MAX_TOKEN_BYTES", 8192, 256, 1 << 20),
            client_msg_rate=reader.number("RELAY_CLIENT_MSG_RATE", 10.0, 0.1, 100000),
            queue_max_messages=reader.integer("RELAY_QUEUE_MAX_MESSAGES", 1000, 1, 10**7),
            queue_max_bytes=reader.integer("RELAY_QUEUE_MAX_BYTES", 1 << 20, 1024, 1 << 32),
            max_connections_per_user=reader.integer("RELAY_MAX_CONNECTIONS_PER_USER", 50, 1, 10**6),
            max_connections_per_worker=reader.integer(
                "RELAY_MAX_CONNECTIONS_PER_WORKER", 0, 0, 10**7
            ),
            max_pending_connections=reader.integer("RELAY_MAX_PENDING_CONNECTIONS", 0, 0, 10**7),
            max_pending_per_address=reader.integer("RELAY_MAX_PENDING_PER_ADDRESS", -1, 0, 10**7),
            resume_rate=reader.number("RELAY_RESUME_RATE", 1.0, 0.01, 10**6),
            resume_burst=reader.integer("RELAY_RESUME_BURST", 10, 1, 10**6),
            behind_fly_proxy=bool(env.get("FLY_APP_NAME", "").strip()),
            linger_seconds=reader.number("RELAY_LINGER_SECONDS", 60.0, 0, 86400),
            history_size=reader.integer("RELAY_HISTORY_SIZE", 100, 0, 10**6),
            history_ttl=reader.number("RELAY_HISTORY_TTL", 300.0, 0, 86400),
            history_max_bytes=reader.integer("RELAY_HISTORY_MAX_BYTES", 64 << 20, 0, 1 << 40),
            drain_seconds=reader.number("RELAY_DRAIN_SECONDS", 10.0, 0, 3600),
            worker_timeout=reader.number("RELAY_WORKER_TIMEOUT", 30.0, 2, 3600),
            db_check_interval=reader.number("RELAY_DB_CHECK_INTERVAL", 4.0, 0.1, 3600),
            db_check_timeout=reader.number("RELAY_DB_CHECK_TIMEOUT", 4.0, 0.1, 3600),
            reconnect_max_delay=reader.number("RELAY_RECONNECT_MAX_DELAY", 10.0, 0.1, 3600),
            dev_mode=dev_mode,
            log_format=reader.choice("RELAY_LOG_FORMAT", "text" if dev_mode else "json",
                                     ("json", "text")),
            log_level=reader.choice("RELAY_LOG_LEVEL", "info",
                                    ("debug", "info", "warning", "error")),
            metrics_token=env.get("RELAY_METRICS_TOKEN", ""),
        )
        if dev_mode and not reader.boolean(DEV_OVERRIDE, False):
            values.refuse_exposed_dev_mode(settings.host, bool(env.get("FLY_APP_NAME")))
        if settings.internal_port == settings.port:
            raise ConfigError(
                f"RELAY_INTERNAL_PORT: must differ from PORT ({settings.port}); it is a second "
                f"port for /health and /metrics, or unset for none")
        limit = settings.worker_connection_limit
        if settings.max_pending_connections >= limit > 1:
            raise ConfigError(
                f"RELAY_MAX_PENDING_CONNECTIONS: must be below a worker's connection limit "
                f"({limit}), or unauthenticated sockets could take every slot")
        return settings

    @property
    def bind_address(self) -> str:
        """gunicorn's ``bind``: ``host:port``, with an IPv6 host in brackets."""
        return self._address(self.port)

    @property
    def bind_addresses(self) -> list[str]:
        """Every address gunicorn binds: the main port, then the internal one if set."""
        ports = [self.port] + ([self.internal_port] if self.internal_port else [])
        return [self._address(port) for port in ports]

    def _address(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


def read_database_url(environ: Mapping[str, str] | None = None) -> str:
    """``DATABASE_URL`` alone, validated (for commands that need nothing else)."""
    url = values.Reader(os.environ if environ is None else environ).required("DATABASE_URL")
    values.check_database_url(url)
    return url


def read_jwt_secret(environ: Mapping[str, str] | None = None) -> bytes:
    """``WEBSOCKET_JWT_SECRET`` alone, validated (for ``python -m relay token``)."""
    secret = values.Reader(os.environ if environ is None else environ).required(
        "WEBSOCKET_JWT_SECRET").encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"WEBSOCKET_JWT_SECRET: must be at least {MIN_SECRET_BYTES} bytes "
            f"(got {len(secret)}); generate one with: openssl rand -hex 32"
        )
    return secret


def read_token_claims(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``RELAY_JWT_ISSUER`` and ``RELAY_JWT_AUDIENCE``: the ``iss`` and ``aud`` relay
    requires, and writes into every token it mints (``python -m relay token``, the tools, the
    development demo)."""
    env = os.environ if environ is None else environ
    return (_claim_value(env, "RELAY_JWT_ISSUER", DEFAULT_JWT_ISSUER),
            _claim_value(env, "RELAY_JWT_AUDIENCE", DEFAULT_JWT_AUDIENCE))


def read_max_token_lifetime(environ: Mapping[str, str] | None = None) -> float:
    """``RELAY_MAX_TOKEN_LIFETIME``: seconds a token may live (``exp - iat``); 0 = no cap."""
    return values.Reader(os.environ if environ is None else environ).number(
        "RELAY_MAX_TOKEN_LIFETIME", DEFAULT_MAX_TOKEN_LIFETIME, 0, 10 * 365 * 86400)


def _claim_value(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "")
    if not raw.strip():
        return default
    # Compared exactly with the token's claim: a stray space or quote from a .env file would
    # refuse every token with a reason ("wrong issuer") that hides the cause.
    if raw != raw.strip() or not raw.isprintable() or '"' in raw or len(raw) > 256:
        raise ConfigError(f"{name}: expected a plain string of at most 256 printable "
                          f"characters without quotes or surrounding spaces, got {raw!r}")
    return raw


def read_channel_templates(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``RELAY_CHANNELS`` alone, validated (for ``python -m relay db trigger``'s advice)."""
    return values.templates((os.environ if environ is None else environ).get("RELAY_CHANNELS", ""))


def read_notify_channel(environ: Mapping[str, str] | None = None) -> str:
    """``RELAY_NOTIFY_CHANNEL`` alone, validated (``db install`` applies it to the database):
    relay's one shared NOTIFY channel, a PostgreSQL channel name of 1 to 63 bytes."""
    env = os.environ if environ is None else environ
    raw = env.get("RELAY_NOTIFY_CHANNEL", "").strip()
    if not raw:
        return DEFAULT_NOTIFY_CHANNEL
    if len(raw.encode()) > 63 or "\x00" in raw:
        raise ConfigError("RELAY_NOTIFY_CHANNEL: a channel name of at most 63 bytes, "
                          f"got {len(raw.encode())} bytes")
    return raw


def notify_channel_if_set(environ: Mapping[str, str] | None = None) -> str | None:
    """``RELAY_NOTIFY_CHANNEL`` validated, or ``None`` when it is not set (``db install``
    then keeps the database's own setting)."""
    env = os.environ if environ is None else environ
    return read_notify_channel(env) if env.get("RELAY_NOTIFY_CHANNEL", "").strip() else None


def jwt_secret_if_set(environ: Mapping[str, str] | None = None) -> bytes | None:
    """``WEBSOCKET_JWT_SECRET`` validated, or ``None`` when it is not set (for the tools,
    which fall back to the secret ``make run`` generated)."""
    env = os.environ if environ is None else environ
    return read_jwt_secret(env) if env.get("WEBSOCKET_JWT_SECRET", "").strip() else None


def database_url_if_set(environ: Mapping[str, str] | None = None) -> str | None:
    """``DATABASE_URL`` as given, or ``None`` when it is not set (for ``relay db``, which
    falls back to the database ``make run`` used; a pooled endpoint installs fine)."""
    env = os.environ if environ is None else environ
    return env.get("DATABASE_URL", "").strip() or None


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides``, for a child it starts (``make run``'s
    gunicorn, the embedded PostgreSQL's commands)."""
    return {**os.environ, **overrides}
