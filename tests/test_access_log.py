"""The access-log line relay writes itself (relay.worker.access_log) is gunicorn's, to the
character, for relay's format; any other format is left to gunicorn."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import PyWSGIHandler

from relay.worker.access_log import cheap_format, write_access_line

ROOT = Path(__file__).resolve().parent.parent
# gunicorn.conf.py's, read from the file (executing it needs relay's whole environment).
RELAY_FORMAT = re.search(r"^access_log_format = '(.*)'$",
                         (ROOT / "gunicorn.conf.py").read_text(), re.M).group(1)


def _logger(access_format: str) -> tuple[Logger, io.StringIO]:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", access_format)
    log = Logger(cfg)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.access_log.handlers = [handler]
    return log, stream


def _handler(log: Logger, **environ: Any) -> SimpleNamespace:
    started = time.time()
    return SimpleNamespace(
        server=SimpleNamespace(log=log), status=b"101 Switching Protocols",
        response_length=None, time_start=started, time_finish=started + 0.0123,
        response_headers=[("Upgrade", "websocket")], headers={"Connection": "close"},
        environ={"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "RAW_URI": "/ws",
                 "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
                 "REMOTE_ADDR": "203.0.113.7", **environ})


@pytest.mark.parametrize("environ", [
    {"HTTP_USER_AGENT": "Mozilla/5.0 (X11) Chrome/120"},
    {"HTTP_USER_AGENT": 'a "quoted" agent", "h": "forged'},  # escaped as gunicorn does
    {},  # no user agent: "-"
])
def test_relays_format_gives_gunicorns_line(environ: dict[str, str]) -> None:
    assert cheap_format(RELAY_FORMAT)
    log, stream = _logger(RELAY_FORMAT)
    handler = _handler(log, **environ)
    PyWSGIHandler.log_request(handler)  # gunicorn's way
    assert write_access_line(handler)
    theirs, ours = stream.getvalue().splitlines()
    assert ours == theirs
    assert '"GET /ws HTTP/1.1" 101' in ours and "12ms" in ours


def test_a_format_naming_other_atoms_is_left_to_gunicorn() -> None:
    for access_format in ('%(h)s %(t)s "%(r)s"', '%(h)s %({user-agent}i)s', "%(u)s %(p)s"):
        assert not cheap_format(access_format)
        log, stream = _logger(access_format)
        assert not write_access_line(_handler(log))
        assert stream.getvalue() == ""


def test_json_logs_keep_the_line_as_their_message() -> None:
    from relay.logs import JsonFormatter

    log, stream = _logger(RELAY_FORMAT)
    log.access_log.handlers[0].setFormatter(JsonFormatter())
    write_access_line(_handler(log, HTTP_USER_AGENT="ua"))
    entry = json.loads(stream.getvalue())
    assert entry["logger"] == "gunicorn.access" and entry["level"] == "info"
    assert entry["msg"] == '203.0.113.7 "GET /ws HTTP/1.1" 101 None 12ms "ua"'
