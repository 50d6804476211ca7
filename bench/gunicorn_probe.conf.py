"""relay's production gunicorn.conf.py, plus bench/loopprobe.py's probe in every worker.

``bench.servers.RelayServer`` uses it instead of gunicorn.conf.py when it is given a probe
directory (``BENCH_PROBE_DIR``): every setting and hook is production's, executed from the
real file; only ``post_worker_init`` also starts the probe after relay's own work.
"""

import os
from pathlib import Path

_PRODUCTION = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
exec(compile(_PRODUCTION.read_text(), str(_PRODUCTION), "exec"))  # noqa: S102

_relay_post_worker_init = globals()["post_worker_init"]


def post_worker_init(worker):  # noqa: F811 - wraps production's hook of the same name
    _relay_post_worker_init(worker)
    from bench.loopprobe import start

    start(os.environ["BENCH_PROBE_DIR"])
    if os.environ.get("BENCH_PROFILE"):
        _profile(Path(os.environ["BENCH_PROFILE"]))


def _profile(directory: Path) -> None:
    """BENCH_PROFILE=<directory>: cProfile the whole worker (every greenlet: one thread), its
    stats written there to ``profile-<pid>.pstats`` every 5 s. cProfile slows the worker: for
    where its CPU goes, never for a rate."""
    import cProfile
    import time

    import gevent

    profiler = cProfile.Profile(time.process_time)  # CPU time: not the other processes' turns
    profiler.enable()

    def dump() -> None:
        while True:
            gevent.sleep(5.0)
            profiler.dump_stats(str(directory / f"profile-{os.getpid()}.pstats"))

    gevent.spawn(dump)
