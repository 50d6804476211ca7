"""A health checker's view of relay during the storm: ``/health`` polled once a second on the
main port (where the clients crowd) and on ``RELAY_INTERNAL_PORT``, as Fly's check would
(5 s timeout, needs a 200).

``HealthWatch(server)`` starts a thread per port; ``switch(server)`` follows a restarted
relay (same ports); ``stop()`` returns each port's polls and a summary: how many answered 200
within the timeout, the slowest answer, and the longest stretch without a good answer.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

TIMEOUT = 5.0  # Fly's check: fly.toml's timeout


def poll(port: int, timeout: float = TIMEOUT) -> tuple[int, float]:
    """(HTTP status, 0 if no answer within ``timeout``; seconds the answer took)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                    timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError):
        status = 0
    return status, time.monotonic() - started


class HealthWatch:
    def __init__(self, ports: dict[str, int], every: float = 1.0) -> None:
        self.every = every
        self.polls: dict[str, list[tuple[float, int, float]]] = {name: [] for name in ports}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name, port), daemon=True)
                         for name, port in ports.items()]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, port: int) -> None:
        while not self._stop.is_set():
            at = time.time()
            status, seconds = poll(port)
            self.polls[name].append((at, status, seconds))
            self._stop.wait(max(0.0, self.every - seconds))

    def stop(self, origin: float, since: float) -> dict[str, Any]:
        """Stop polling; per port, the polls sent from ``since`` on summed up, and every poll
        (seconds after ``origin``, status, seconds it took)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 2)
        return {name: {**summary([p for p in polls if p[0] >= since], since),
                       "timeline": [[round(at - origin, 1), status, round(seconds, 3)]
                                    for at, status, seconds in polls]}
                for name, polls in self.polls.items()}


def summary(polls: list[tuple[float, int, float]], since: float) -> dict[str, Any]:
    """How many answered 200 within the timeout, the slowest, the longest stretch without."""
    good = [p for p in polls if p[1] == 200 and p[2] <= TIMEOUT]
    longest = 0.0
    last_good = since
    for at, status, seconds in polls:
        if status == 200 and seconds <= TIMEOUT:
            longest = max(longest, at - last_good)
            last_good = at + seconds
    if polls:
        longest = max(longest, polls[-1][0] - last_good)
    return {"polls": len(polls), "ok": len(good),
            "statuses": {str(s): sum(1 for p in polls if p[1] == s) for s in
                         sorted({p[1] for p in polls})},
            "slowestSeconds": max((p[2] for p in polls), default=None),
            "longestWithoutOkSeconds": longest}
