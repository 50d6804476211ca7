"""relay: PostgreSQL LISTEN/NOTIFY fanned out to browser WebSockets.

One listener process per instance holds the only database connection (``listener``),
supervised from gunicorn's master (``supervisor``); gevent workers serve ``/ws`` and
``/health`` (``app``, ``connection``, ``hub``, ``link``, ``node``) and talk to the listener
over a Unix-domain socket (``bus``).
"""

__version__ = "0.1.0"
