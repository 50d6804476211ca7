"""The database link's wait: until the database's socket or the wake pipe is readable.

``DatabaseLink`` (``relay.listener.database``) waits here between notifications, once per
transaction that notifies. Two libev watchers live as long as the database connection:
``gevent.select.select`` built two watchers, a timeout and a result object on every wake-up
(psycopg2's receiving loop alone, transactions of 5: 23 -> 12 us of CPU per notification).
"""

from __future__ import annotations

import gevent
import gevent.hub


class Readable:
    def __init__(self, fd: int, wake_fd: int) -> None:
        loop = gevent.get_hub().loop
        self._loop = loop
        self._watchers = (loop.io(fd, 1), loop.io(wake_fd, 1))

    def wait(self, timeout: float) -> bool:
        """Return once either is readable, or after ``timeout`` seconds: ``True`` when the
        wake pipe was (only then is it worth a read: an empty read is a syscall and an
        exception, once per transaction that notifies). The database's socket is always
        looked at by the caller (its reads are non-blocking)."""
        waiter = gevent.hub.Waiter()  # type: ignore[var-annotated]
        timer = self._loop.timer(timeout)
        try:
            for watcher in self._watchers:
                watcher.start(waiter.switch, watcher)
            timer.start(waiter.switch, None)
            return waiter.get() is self._watchers[1]
        finally:
            # Stopped before anything else runs: a watcher that fired too cannot switch
            # into this greenlet later.
            for watcher in self._watchers:
                watcher.stop()
            timer.close()

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.close()
