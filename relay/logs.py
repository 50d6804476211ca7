"""Log lines: one JSON object per event in production, readable text in development.

Every process (gunicorn master and workers, supervisor, listener) logs through the same
formatter; gunicorn's own error and access logs are routed to it by ``gunicorn_logconfig``.
No line ever carries a token or a query string (see ``handshake.RelayHandler.log_request``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from types import TracebackType
from typing import Any

from relay.config import Settings

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# json.dumps with ensure_ascii=False builds an encoder per call. (orjson would take a sixth of
# the time, but writes no space after ":" and ",": every line's bytes would change under the
# operators' filters.)
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def lean_records() -> None:
    """Leave out of every log record what no relay line prints: the caller's file, line and
    function (a walk up the stack), the thread's and the multiprocessing process's names
    (Python's logging HOWTO, "Optimization"). A worker writes two lines per WebSocket
    handshake (its access line, `connected`), thousands a second in a reconnect storm."""
    logging._srcfile = None  # type: ignore[attr-defined]  # the documented switch
    logging.logThreads = False
    logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    # (second, its timestamp to the seconds), replaced whole: a thread that logs meanwhile
    # (the master has a few) never pairs one second with another's text.
    _last: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{last[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process or os.getpid(),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_") and value is not None:
                line[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"


def formatter_for(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings) -> None:
    """Route relay's loggers to stderr with the configured format (listener, supervisor)."""
    lean_records()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(settings))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    if "gevent" in sys.modules:  # the listener; the supervisor does not use gevent
        route_gevent_errors()


def route_gevent_errors() -> None:
    """Log a greenlet's unhandled error as one line instead of gevent's raw traceback.

    gevent's hub writes a failed greenlet's traceback straight to stderr, several lines and
    outside any format. Only the error and its traceback are logged, not the greenlet's repr,
    which would show the arguments it was spawned with. Called in each gevent process (the
    workers via gunicorn.conf.py's ``post_worker_init``, the listener via ``configure``).
    """
    import gevent

    log = logging.getLogger("relay.gevent")

    def print_exception(context: object, kind: type[BaseException], value: BaseException,
                        tb: TracebackType | None) -> None:
        log.error("unhandled %s in a greenlet", kind.__name__, exc_info=(kind, value, tb))

    gevent.get_hub().print_exception = print_exception


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn: its error/access logs and relay's, one format."""
    formatter: dict[str, Any] = (
        {"()": "relay.logs.JsonFormatter"} if settings.log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"relay": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "relay",
                       "stream": "ext://sys.stderr"},
            "stdout": {"class": "logging.StreamHandler", "formatter": "relay",
                       "stream": "ext://sys.stdout"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }
