"""gunicorn configuration for relay: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every value comes from relay's validated settings (the environment); see the README's
configuration table. This file is executed again on SIGHUP, so it has no side effects at
load time: the listener's supervisor is started from the `on_starting` hook, which gunicorn
runs once per master.
"""

import os
import sys

from relay.config import ConfigError, Settings
from relay.logs import gunicorn_logconfig

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    # One clear line naming the variable, and a non-zero exit.
    print(f"relay: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

bind = [f"0.0.0.0:{_settings.port}"]
workers = _settings.web_concurrency
worker_class = "relay.worker.RelayWorker"
# The gevent pool size: every WebSocket holds one slot (trap 8). relay refuses WebSockets
# with 1013 a little below it, so that /health always finds a free slot.
worker_connections = _settings.worker_connections
# Workers must outlive the drain (RELAY_DRAIN_SECONDS) plus the last close handshakes.
graceful_timeout = int(_settings.drain_seconds) + 10
timeout = 30
keepalive = 5
# Access log lines never include the query string (tokens may travel in it).
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
logconfig_dict = gunicorn_logconfig(_settings)
proc_name = "relay"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server):
    """Once per master (not on reload): one supervisor, which keeps one listener alive."""
    from relay.supervisor import spawn_supervisor

    os.environ["RELAY_SOCKET_PATH"] = _settings.socket_path
    server.relay_supervisor = spawn_supervisor()
    server.log.info("relay listener supervisor started (pid %s, socket %s)",
                    server.relay_supervisor.pid, _settings.socket_path)


def on_exit(server):
    """Clean halt: stop the supervisor (a kill -9'd master is handled by PDEATHSIG)."""
    from relay.supervisor import stop_supervisor

    proc = getattr(server, "relay_supervisor", None)
    if proc is not None:
        stop_supervisor(proc)
