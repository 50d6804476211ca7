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
