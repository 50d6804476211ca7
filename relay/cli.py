"""``python -m relay …``: the processes relay runs, and the operator's and developer's tools.

Process entry points (started by relay itself): ``supervise``, ``listen``.
Tools: ``dev`` (run everything locally on an embedded PostgreSQL), ``token`` (mint a
token exactly like the app's endpoint), ``db install`` (apply relay's ``sql/``), ``db trigger``
(attach relay's trigger to an app's table), ``db touch`` (write a row of the example table so
that a notification fires), ``kick`` (revoke a user's tokens: every relay closes their
connections and refuses the tokens issued before), ``watch`` (print what a user receives),
``close-codes --js`` (the JS client's close-code table), ``size`` (machines, settings and
monthly cost for a number of users, from the benchmark's figures: relay/sizing.py).

A tool's expected failures (bad input, database down, relay unreachable or refusing) end
with one line on stderr and a non-zero exit, never a traceback.

This module is the command table; the tools themselves are in ``relay.tools`` and
``relay.dev.run``. Heavy imports stay inside the commands: ``listen`` must monkey-patch
gevent before anything imports ``socket``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from relay.config import ConfigError
from relay.tools import DEV_DIR, CommandError

# The processes relay runs itself: a failure there is a bug or an outage worth a traceback in
# the logs. Every other command is a tool a person types.
_PROCESSES = ("listen", "supervise")




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("listen", help="run the listener (started by the supervisor)")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--instance-started-at", type=float, default=None)
    p = sub.add_parser("supervise", help="keep one listener alive (started by gunicorn)")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--instance-started-at", type=float, default=None)

    p = sub.add_parser("token", help="print a token with the claims the app's endpoint issues")
    p.add_argument("--user-id", required=True)
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    p = sub.add_parser(
        "kick", help="revoke a user's tokens: every relay closes their connections now",
        description="Revoke USER's tokens issued until now (relay_revoke in the database): "
                    "every relay instance closes that user's connections with 4001 within a "
                    "second and refuses those tokens for the rest of their lifetime. Tokens "
                    "the app issues afterwards are accepted.")
    p.add_argument("--user-id", required=True)

    p = sub.add_parser("db", help="database tools")
    db = p.add_subparsers(dest="db_command", required=True)
    i = db.add_parser("install", help="install relay's functions from sql/ (idempotent)")
    i.add_argument("--with-examples", action="store_true",
                   help="also create the demo's example tables (subscription, usage)")
    i.add_argument("--print", dest="print_only", action="store_true",
                   help="only print the SQL (for a migration); needs no database")
    t = db.add_parser(
        "trigger", help="attach relay's trigger to a table (idempotent)",
        description="Create (or with --drop remove) the trigger that notifies "
                    "user_<CHANNEL>_<user id> on every insert, update and delete of TABLE. "
                    "Names are taken exactly as written (case-sensitive, quoted in SQL).")
    t.add_argument("table", metavar="TABLE", help="table name, or SCHEMA.TABLE")
    t.add_argument("--channel", help="channel's table part: Subscription -> "
                                     "user_Subscription_<user id>")
    t.add_argument("--user-column", default="user_id",
                   help="column holding the owner's user id (default user_id)")
    t.add_argument("--id-column", default="id",
                   help="column identifying the row, always sent (default id)")
    t.add_argument("--columns", help="comma-separated columns to send (default: EVERY column "
                                     "of the row reaches the owner's browser)")
    t.add_argument("--drop", action="store_true", help="remove the trigger instead")
    t.add_argument("--print", dest="print_only", action="store_true",
                   help="only print the SQL (for a migration); needs no database")
    t = db.add_parser("touch", help="upsert the example subscription row of a user")
    t.add_argument("--user-id", required=True)
    t.add_argument("--plan", default="pro")

    p = sub.add_parser("watch", help="connect as a user and print every message")
    p.add_argument("--url", default="ws://127.0.0.1:3000/ws")
    p.add_argument("--user-id", default="42")

    p = sub.add_parser("dev", help="run relay locally on an embedded PostgreSQL")
    p.add_argument("--port", type=int, default=3000, help="when PORT is not set (default 3000)")
    p.add_argument("--state-dir", type=Path, default=DEV_DIR,
                   help="where the database, its URL and the secret are kept (.relay-dev)")

    p = sub.add_parser("close-codes", help="print the close-code table")
    p.add_argument("--js", action="store_true", help="as client/src/closeCodes.js")

    from relay import sizing_report

    p = sub.add_parser("size", help="machines, settings and monthly cost for N users "
                                    "(docs/cost.md)")
    sizing_report.add_arguments(p)

    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the person asked to stop, nothing went wrong
        return 130
    except Exception as exc:
        failure = None if args.command in _PROCESSES else _expected_failure(exc)
        if failure is None:
            raise
        print(f"relay: {failure}", file=sys.stderr)
        return failure.exit_code


def _expected_failure(exc: Exception) -> CommandError | None:
    """The one line for a failure a person can fix; None for a bug (keep the traceback)."""
    if isinstance(exc, CommandError):
        return exc
    from relay.triggers import TriggerError

    if isinstance(exc, TriggerError):  # the command line names something that cannot work
        return CommandError(f"db trigger: {exc}", 2)
    import psycopg2

    if isinstance(exc, psycopg2.OperationalError):
        return CommandError(f"cannot use the database: {_first_line(str(exc))}")
    if isinstance(exc, psycopg2.Error):
        return CommandError(f"database error: {_first_line(str(exc))}")
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _listen(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    from relay import logs
    from relay.config import Settings
    from relay.listener.server import run_listener
    from relay.supervisor import die_with_parent

    settings = Settings.from_env()
    logs.configure(settings)
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 0  # the supervisor died while we were starting
    die_with_parent()
    run_listener(settings, args.instance_started_at)
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from relay import logs
    from relay.config import Settings
    from relay.supervisor import run_supervisor

    logs.configure(Settings.from_env())
    return run_supervisor(args.parent_pid, args.instance_started_at)


def _token(args: argparse.Namespace) -> int:
    from relay.tools import mint_token

    print(mint_token(args.user_id, args.ttl))
    return 0


def _kick(args: argparse.Namespace) -> int:
    from relay.tools import kick

    return kick(args)


def _db(args: argparse.Namespace) -> int:
    from relay.tools import db

    return db(args)


def _watch(args: argparse.Namespace) -> int:
    from relay.tools import watch

    return watch(args)


def _dev(args: argparse.Namespace) -> int:
    from relay.dev.run import run_dev

    return run_dev(args.port, args.state_dir)


def _close_codes(args: argparse.Namespace) -> int:
    from relay import closecodes

    if args.js:
        sys.stdout.write(closecodes.as_javascript())
    else:
        for c in closecodes.ALL:
            print(f"{c.code}  {c.name:<22} reconnect={c.reconnect:<9} {c.reason}")
    return 0


def _size(args: argparse.Namespace) -> int:
    from relay import sizing_report

    return sizing_report.run(args)


_COMMANDS = {
    "listen": _listen,
    "supervise": _supervise,
    "token": _token,
    "db": _db,
    "kick": _kick,
    "watch": _watch,
    "dev": _dev,
    "close-codes": _close_codes,
    "size": _size,
}
