"""Open-file limits: every WebSocket is a file descriptor, so a worker needs
RELAY_WORKER_CONNECTIONS + 64 of them. gunicorn.conf.py raises the soft limit as far as the
hard limit allows, and says so in one warning when that is not enough."""

from __future__ import annotations

import resource
from collections.abc import Callable

import psutil
import pytest

from tests.support import RelayProcess

pytestmark = pytest.mark.slow  # every test here boots real processes


def test_soft_limit_is_raised_for_the_pool_and_a_short_hard_limit_is_reported(
        relay_factory: Callable[..., RelayProcess]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 900_000 or hard < 512:
        pytest.skip(f"needs a finite hard limit on open files (this machine: {hard})")
    # A pool bigger than the hard limit: the soft limit can only go up to the hard one.
    connections = hard + 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by gunicorn
    try:
        relay = relay_factory({"RELAY_WORKER_CONNECTIONS": str(connections)}, workers=1,
                              wait=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    relay.wait_healthy()
    for pid in relay.worker_pids():
        assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
    warnings = [line for line in relay.logs().splitlines() if "open files limit" in line]
    assert len(warnings) == 1, warnings
    assert f"RELAY_WORKER_CONNECTIONS + 64 = {connections + 64}" in warnings[0]
    assert '"level": "warning"' in warnings[0]
    relay.connect("fd-user").close()
