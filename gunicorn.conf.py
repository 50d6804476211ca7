"""gunicorn configuration for relay: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every knob comes from the environment through relay's validated ``Settings`` (defaults in
relay/config.py and the README's configuration table); nothing here needs editing for a
deployment. gunicorn executes this file again on SIGHUP, in the same master with the same
environment, so it has no side effects at load time: the listener's supervisor is started
from the ``on_starting`` hook, which gunicorn runs once per master.

Do not override these with ``GUNICORN_CMD_ARGS`` (gunicorn would apply it over this file):
fly.toml's connection limits are derived from the values below.
"""

import math
import os
import resource
import sys

from relay.config import ConfigError, Settings
from relay.logs import gunicorn_logconfig

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    # One clear line naming the variable, and a non-zero exit.
    print(f"relay: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

# RELAY_HOST (0.0.0.0; 127.0.0.1 in development mode) and PORT (3000). Fly's proxy connects
# to it (fly.toml internal_port). With RELAY_INTERNAL_PORT, a second socket on the same host:
# the workers serve /health and /metrics there (nothing else), from their own accept queue
# and gevent pool (gunicorn gives each bound socket its own), so that a reconnect storm that
# fills the main port's queue does not hold a health check (fly.toml's [checks]).
bind = _settings.bind_addresses
# WEB_CONCURRENCY (CPU count): one gevent worker per vCPU.
workers = _settings.web_concurrency
worker_class = "relay.worker.process.RelayWorker"
# RELAY_HANDSHAKE_CONCURRENCY (256): the gevent pool of a worker, the handshakes (and HTTP
# requests) it serves at once; a WebSocket leaves it once authenticated (it parks, see
# relay/worker/connection.py). When the pool is full the worker stops accepting, and new
# connections wait in the kernel's accept queue. A pool as large as the worker's connections
# took a whole reconnect storm at once, every handshake waiting behind all the others (bench
# scale, 17,000 clients on one worker: it ran out of file descriptors and never answered
# /health; with a pool of 100 all were back in 63 s). The number of WebSockets a worker keeps
# comes from RELAY_WORKER_CONNECTIONS (Settings.worker_connection_limit), not from the pool.
worker_connections = _settings.handshake_concurrency
# RELAY_WORKER_TIMEOUT (30 s): a worker whose event loop has not run for this long (it
# heartbeats every second) is killed and replaced; its clients reconnect and resume.
timeout = math.ceil(_settings.worker_timeout)
# RELAY_DRAIN_SECONDS (10 s) + 10: on SIGTERM or HUP a worker closes its clients with 1012
# spread over the drain, then awaits their close handshakes until 2.5 s after it; gunicorn
# kills it after graceful_timeout. fly.toml's kill_timeout must be longer still.
graceful_timeout = math.ceil(_settings.drain_seconds) + 10
# Never recycle workers after N requests: each recycle would drop every WebSocket it holds.
max_requests = 0
# Each worker builds its own app and Node after the fork (and a HUP loads new code).
preload_app = False
# No gunicorn control socket (gunicornc): relay is operated with signals (HUP, TERM). Its
# default path, $HOME/.gunicorn/gunicorn.ctl, is not writable in the image and is shared by
# every instance on a host, and it can change the worker count behind fly.toml's limits.
control_socket_disable = True
# Access lines carry the path, never the query string (tokens may travel in it); idle HTTP
# keep-alive is bounded by RELAY_HANDSHAKE_TIMEOUT in relay's handler. FORWARDED_ALLOW_IPS is
# read by gunicorn itself; relay takes the client address from Fly's Fly-Client-IP header.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
logconfig_dict = gunicorn_logconfig(_settings)
proc_name = "relay"

# ----- derived values: fly.toml and docs/operations.md are computed from these -----
# WebSockets one worker accepts before closing new ones with 1013 (slots kept for /health).
relay_websockets_per_worker = _settings.worker_connection_limit
# What one machine can hold: fly.toml's hard_limit must stay below it.
relay_websockets_per_machine = workers * relay_websockets_per_worker
# Open files one worker needs: a socket per connection, plus its own (listener link, logs,
# gevent's pipes, the listen socket).
relay_open_files_per_worker = _settings.worker_connections + 64


def _raise_open_files_limit(server) -> None:
    """Raise the soft RLIMIT_NOFILE to what a worker needs (workers inherit it), as far as
    the hard limit allows; warn if even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = relay_open_files_per_worker
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        server.log.warning(
            "open files limit %d is below RELAY_WORKER_CONNECTIONS + 64 = %d: a worker will "
            "fail to accept connections before it reaches its connection limit; raise the "
            "hard limit (ulimit -Hn) or lower RELAY_WORKER_CONNECTIONS", soft, need)


def on_starting(server):
    """Once per master (not on reload): file limit, then one supervisor, which keeps one
    listener alive and is itself started again by the master's main loop if it dies."""
    from relay.listener_socket import private_socket_path
    from relay.supervisor import SupervisorProcess, watch_from_arbiter

    _raise_open_files_limit(server)
    # The listener's socket: RELAY_SOCKET_PATH, or a 0700 directory of this master's own
    # (a guessable path in the shared /tmp could be squatted by another local user). Chosen
    # once, here: the supervisor, the listener and the workers (forked later, and this file
    # re-executed on HUP) inherit it as RELAY_SOCKET_PATH, which their Settings read;
    # nothing computes it again.
    server.relay_socket_dir_created = not _settings.socket_path
    socket_path = _settings.socket_path or private_socket_path()
    server.relay_socket_path = socket_path
    os.environ["RELAY_SOCKET_PATH"] = socket_path
    server.relay_supervisor = SupervisorProcess()
    server.relay_supervisor.start()
    # gunicorn reaps a dead supervisor without a hook (trap 7): watch it from the main loop.
    watch_from_arbiter(server, server.relay_supervisor)
    server.log.info("relay listener supervisor started (pid %s, socket %s)",
                    server.relay_supervisor.proc.pid, socket_path)


def post_worker_init(worker):
    """In each worker: a greenlet's unhandled error is logged as one line, not raw stderr;
    log records without what no line prints."""
    from relay.logs import lean_records, route_gevent_errors

    route_gevent_errors()
    lean_records()


def worker_exit(server, worker):
    """In a worker, after gunicorn's own exit steps: one that drained ends at once, without
    the interpreter's teardown (relay.worker.process.exit_now says why)."""
    if getattr(worker, "drained", False):
        from relay.worker.process import exit_now

        exit_now()


def on_exit(server):
    """Clean halt: no more supervisor restarts, stop the current one (a kill -9'd master is
    handled by PDEATHSIG), and remove the listener's socket."""
    from relay.listener_socket import remove

    supervisor = getattr(server, "relay_supervisor", None)
    if supervisor is not None:
        supervisor.stop()
        # The listener is gone: its socket, and the directory if the master made it.
        remove(server.relay_socket_path, server.relay_socket_dir_created)
