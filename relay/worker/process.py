"""The gunicorn worker class: gevent + relay's handshake handler + drain on SIGTERM.

Use it as ``worker_class = "relay.worker.process.RelayWorker"`` (gunicorn.conf.py does). gunicorn's
gevent worker waits for its pool to empty on SIGTERM, which WebSockets never do by
themselves (trap 8): this worker starts the node's drain, which closes every client with
1012 over ``RELAY_DRAIN_SECONDS`` and awaits their close handshakes until 2.5 s after it. Once the
drain is over the worker ends whatever its pools still serve (handshakes, keep-alive
requests) and exits: it neither waits for gunicorn's ``graceful_timeout`` nor for
connections whose clients never answered their close (the exit closes their sockets).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from typing import Any

import gevent
from gevent.pywsgi import LoggingLogAdapter
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIServer

from relay.collector import Collector
from relay.worker.handshake import RelayHandler
from relay.worker.node import nodes

# The servers of this process (one per bound socket: PORT, RELAY_INTERNAL_PORT), which
# gunicorn's worker keeps to itself: the drain stops them once it is over.
_servers: weakref.WeakSet[RelayServer] = weakref.WeakSet()


class RelayServer(PyWSGIServer):
    """gevent's complaints about a malformed request go to logging (one formatted line, at
    warning level), not raw to stderr as its ``error_log`` default would write them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("error_log",
                          LoggingLogAdapter(logging.getLogger("relay.http"), logging.WARNING))
        super().__init__(*args, **kwargs)
        _servers.add(self)


log = logging.getLogger("relay.worker")


class RelayWorker(GeventPyWSGIWorker):
    server_class = RelayServer
    wsgi_handler = RelayHandler
    _quitting = False
    _term_at: float | None = None
    _drain: gevent.Greenlet | None = None
    drained = False  # the drain ran to its end and run() returned normally

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._start_drain()
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._term_at = time.monotonic()
            self._drain = gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self) -> None:
        # A worker still booting may have no node yet (nothing to drain); it must not fail
        # here: an exit with WORKER_BOOT_ERROR halts the whole server (two quick HUPs did).
        # The nodes come from relay.worker.node's registry, not from ``self.wsgi``, which may be a
        # middleware around relay's app.
        gevent.joinall([gevent.spawn(node.drain) for node in nodes() if not node.draining])
        # Every client has had its 1012 and its close handshake's time. What the pools still
        # serve (a handshake that began in the last second before gunicorn stopped listening,
        # an idle keep-alive request) would hold gunicorn's exit until graceful_timeout
        # (bench scale, 40,000 clients: the old relay exited after 20.0 s, drain 10 s).
        for server in list(_servers):
            server.stop(timeout=0)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # Ctrl-C in a terminal signals the whole process group: a worker gets SIGINT from the
        # terminal and, in the same moment, SIGQUIT from the master that got it too. gevent's
        # worker answers each with a greenlet that calls sys.exit; the second SystemExit,
        # thrown into the worker while the first still unwinds, printed a traceback at the
        # end of `make run` (tests/test_dev.py saw one under load). Once is enough.
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)

    def run(self) -> None:
        # No log line of relay's shows a thread, a source file or a line number (relay.logs),
        # and in a gevent worker the thread lookup made a dummy Thread for every greenlet that
        # logged: a handshake's access line, a connection's "closed" line (the logging HOWTO,
        # "Optimization"; 126 -> 88 us per line from a fresh greenlet).
        logging.logThreads = False
        logging._srcfile = None
        # Everything loaded so far (the app, Flask, gevent, the modules: ~45,000 objects)
        # lives as long as the worker, and so does most of what survives a full collection
        # (the held connections): out of the collector's sight, each full collection walks
        # only what came since the last one (relay.collector).
        Collector().install()
        super().run()  # returns once the servers are closed and their pools are empty
        self._start_drain()  # stopped without SIGTERM (e.g. its parent went away)
        assert self._drain is not None
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while not self._drain.ready() and time.monotonic() < deadline:
            self.notify()
            self._drain.join(timeout=0.5)
        started = self._term_at or time.monotonic()
        log.info("worker exiting %.1fs after the signal (%d connections never answered their "
                 "close)", time.monotonic() - started,
                 sum(len(node.connections) for node in nodes()))
        self.drained = True  # gunicorn.conf.py's worker_exit: exit_now()


def exit_now() -> None:
    """End a worker that drained, once gunicorn's own exit steps are done (its ``Worker
    exiting`` line, its heartbeat file): its logs flushed, then ``os._exit(0)``.

    The interpreter's teardown would free every object one by one (the modules, the ~45,000
    frozen at boot, gevent's hub, what the connections left) for nothing: relay registers no
    exit handler, the kernel closes the sockets, and the listener releases what the worker
    held when its link closes, as it does for a worker that dies. That teardown took 0.04-0.14 s
    at 20,000 clients a worker on a quiet machine, the last step before the master can reap.
    """
    logging.shutdown()  # what atexit would do for the log handlers: flush and close
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
