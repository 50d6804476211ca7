"""``python -m relay size``: the sizing calculator's command line, report and docs table.

relay/cli.py adds the subcommand with ``add_arguments`` and runs it with ``run``; the
arithmetic is relay/sizing.py's, the text relay/sizing_render.py's. ``--table`` prints the
markdown table docs/cost.md embeds (tests/test_sizing.py checks that the doc holds exactly
this output).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from relay.sizing import Inputs, size
from relay.sizing_data import (
    MIB,
    PRESETS,
    SHIPPED_FIGURES,
    SHIPPED_PRICES,
    SizingError,
    load_figures,
    load_prices,
)
from relay.sizing_render import render, render_table

TABLE_USERS = (1_000, 10_000, 100_000)
_DEFAULTS = {f.name: f.default for f in fields(Inputs)}
T = TypeVar("T", int, float)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options; numbers are parsed by ``run`` so that a bad one is refused in one line."""
    d = _DEFAULTS
    p.add_argument("--users", help="users connected at the same time, at peak")
    p.add_argument("--connections-per-user", metavar="N",
                   help=f"WebSockets per connected user ({d['connections_per_user']}; the JS "
                        "client shares one among a browser's tabs)")
    p.add_argument("--peak-rate", metavar="R",
                   help="notifications/s committed at peak (default: users / 60, one update "
                        "per connected user per minute)")
    p.add_argument("--notifications-per-commit", metavar="N",
                   help=f"notifications per transaction ({d['notifications_per_commit']:g})")
    p.add_argument("--publishing", default=d["publishing"],
                   help="how the app publishes: outbox (relay_publish and the durable history, "
                        "after python -m relay db install) or notify (its own triggers' "
                        f"pg_notify per user, RELAY_USER_CHANNELS=listen) ({d['publishing']})")
    p.add_argument("--machine", default=d["machine"],
                   help=f"Fly preset ({', '.join(PRESETS)}) or auto for the cheapest "
                        f"({d['machine']})")
    p.add_argument("--memory", help="machine memory, e.g. 1gb or 512mb (default: the cheapest "
                                    "listed size for the load)")
    p.add_argument("--reconnect-seconds", metavar="S",
                   help="longest acceptable time for a full machine's clients to reconnect "
                        f"({d['reconnect_seconds']:g})")
    p.add_argument("--min-machines", metavar="N", help=f"({d['min_machines']})")
    p.add_argument("--max-worker-connections", metavar="N",
                   help=f"ceiling of RELAY_WORKER_CONNECTIONS ({d['max_worker_connections']})")
    p.add_argument("--history-mb", metavar="MB",
                   help=f"RELAY_HISTORY_MAX_BYTES in MB ({d['history_bytes'] // MIB})")
    p.add_argument("--ping-interval", metavar="S",
                   help=f"RELAY_PING_INTERVAL: one heartbeat per connection this often "
                        f"({d['ping_interval']:g})")
    p.add_argument("--allowance-kb", metavar="KB",
                   help="planning allowance per connection beyond the measured RSS "
                        f"({d['allowance_bytes_per_connection'] / 1e3:g})")
    p.add_argument("--usable-memory", metavar="SHARE",
                   help=f"share of the machine's memory relay may use ({d['usable_memory_share']})")
    p.add_argument("--cpu-target", metavar="SHARE",
                   help=f"share of the sustained CPU quota to plan for ({d['cpu_target']})")
    p.add_argument("--average-share", metavar="SHARE",
                   help="the month's average of connected users / the peak "
                        f"({d['average_share']})")
    p.add_argument("--neon-cu", metavar="CU",
                   help=f"Neon compute size relay's LISTEN keeps awake ({d['neon_cu']})")
    p.add_argument("--outbox-retention-hours", metavar="H",
                   help=f"durable outbox retention ({d['outbox_retention_hours']:g}: "
                        "relay.settings' retention, 15 minutes)")
    p.add_argument("--old-function-memory-gb", metavar="GB",
                   help=f"old design: memory of the function ({d['old_function_memory_gb']:g})")
    p.add_argument("--old-sessions-per-instance", metavar="N",
                   help="old design: sessions one function instance carries "
                        f"({d['old_sessions_per_instance']}; more with Fluid compute)")
    p.add_argument("--old-max-duration", metavar="S",
                   help="old design: function maximum duration, then a new invocation "
                        f"({d['old_max_duration_s']:g})")
    p.add_argument("--figures", type=Path, action="append", default=[], metavar="PATH",
                   help="figures from make bench (bench/results/sizing.json), over the "
                        "shipped ones; may repeat")
    p.add_argument("--prices", type=Path, action="append", default=[], metavar="PATH",
                   help="prices over the shipped ones (relay/sizing_prices.json's format or "
                        "{name: number}); may repeat")
    p.add_argument("--price", action="append", default=[], metavar="NAME=VALUE",
                   help="one price, e.g. neonCuHour=0.26")
    p.add_argument("--table", action="store_true",
                   help="the docs/cost.md table: 1,000, 10,000 and 100,000 users")


def run(args: argparse.Namespace) -> int:
    try:
        figures = load_figures([SHIPPED_FIGURES, *args.figures])
        overrides = dict(_pair(item) for item in args.price)
        prices = load_prices([SHIPPED_PRICES, *args.prices], overrides)
        if args.table:
            if args.users is not None:
                raise SizingError("--table: sizes 1,000, 10,000 and 100,000 users; leave out "
                                  "--users")
            sizings = [size(inputs_from(args, users), figures, prices) for users in TABLE_USERS]
            print(render_table(sizings, figures, prices))
        else:
            if args.users is None:
                raise SizingError("--users: required (users connected at the same time, at "
                                  "peak), or --table")
            print(render(size(inputs_from(args), figures, prices), figures, prices))
    except SizingError as exc:
        print(f"relay: size: {exc}", file=sys.stderr)
        return 2
    return 0


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise SizingError(f"--price: expected NAME=VALUE, got {item!r}")
    return name.strip(), value.strip()


def _parse(raw: str | None, option: str, kind: Callable[[str], T]) -> T | None:
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise SizingError(f"{option}: expected {noun}, got {raw!r}") from None


def _memory_mb(raw: str | None) -> int | None:
    if raw is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gb|g|mb|m)?\s*", raw.lower())
    if not match:
        raise SizingError(f"--memory: expected a size such as 1gb or 512mb, got {raw!r}")
    number = float(match.group(1))
    mb = number * 1024 if match.group(2) in ("gb", "g") else number
    if mb != int(mb):
        raise SizingError(f"--memory: {raw!r} is not a whole number of MB")
    return int(mb)


def inputs_from(args: argparse.Namespace, users: int | None = None) -> Inputs:
    given: dict[str, Any] = {
        "users": users if users is not None else _parse(args.users, "--users", int),
        "connections_per_user": _parse(args.connections_per_user, "--connections-per-user",
                                       float),
        "peak_rate": _parse(args.peak_rate, "--peak-rate", float),
        "notifications_per_commit": _parse(args.notifications_per_commit,
                                           "--notifications-per-commit", float),
        "publishing": args.publishing,
        "machine": args.machine,
        "memory_mb": _memory_mb(args.memory),
        "reconnect_seconds": _parse(args.reconnect_seconds, "--reconnect-seconds", float),
        "min_machines": _parse(args.min_machines, "--min-machines", int),
        "max_worker_connections": _parse(args.max_worker_connections,
                                         "--max-worker-connections", int),
        "history_bytes": _scaled(args.history_mb, "--history-mb", MIB),
        "ping_interval": _parse(args.ping_interval, "--ping-interval", float),
        "allowance_bytes_per_connection": _scaled(args.allowance_kb, "--allowance-kb", 1000),
        "usable_memory_share": _parse(args.usable_memory, "--usable-memory", float),
        "cpu_target": _parse(args.cpu_target, "--cpu-target", float),
        "average_share": _parse(args.average_share, "--average-share", float),
        "neon_cu": _parse(args.neon_cu, "--neon-cu", float),
        "outbox_retention_hours": _parse(args.outbox_retention_hours,
                                         "--outbox-retention-hours", float),
        "old_function_memory_gb": _parse(args.old_function_memory_gb,
                                         "--old-function-memory-gb", float),
        "old_sessions_per_instance": _parse(args.old_sessions_per_instance,
                                            "--old-sessions-per-instance", int),
        "old_max_duration_s": _parse(args.old_max_duration, "--old-max-duration", float),
    }
    return Inputs(**{k: v for k, v in given.items() if v is not None or k == "peak_rate"})


def _scaled(raw: str | None, option: str, unit: int) -> Any:
    value = _parse(raw, option, float)
    return None if value is None else (int(value * unit) if unit == MIB else value * unit)
