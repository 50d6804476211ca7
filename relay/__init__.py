"""relay: PostgreSQL LISTEN/NOTIFY fanned out to browser WebSockets.

The folders say which process a module runs in. ``relay/listener/``: the one process per
instance that holds the only database connection. ``relay/worker/``: the gunicorn gevent
workers that serve ``/ws``, ``/health`` and ``/metrics``. ``relay/dev/``: development only.
The modules at the top are shared by them, or are the processes' doors: the settings
(``config``), the wire between listener and workers (``bus``), the client protocol's
messages (``protocol``), close codes, channels, auth, logs, the listener's socket, the
supervisor (gunicorn's master and its helper process) and the command line (``cli``).
docs/architecture.md has the table.
"""

__version__ = "0.1.0"
