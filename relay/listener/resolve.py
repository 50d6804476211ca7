"""The database's host name, resolved by gevent's resolver before libpq connects.

libpq looks a host name up with a blocking ``getaddrinfo`` inside ``PQconnectStart``, before
psycopg2's wait callback ever runs: a slow or unreachable DNS server would freeze the whole
listener (every worker's attaches and ``/health`` with it) for the resolver's timeout, on
every reconnect. ``libpq_address`` resolves the name on gevent's hub resolver (a thread pool
by default) and gives libpq ``hostaddr`` — one entry per address, tried in order — next to
``host``, which libpq still uses for TLS (SNI, which Neon routes on, and ``verify-full``) and
for the password file.
"""

from __future__ import annotations

import ipaddress
import socket

import gevent
import psycopg2.extensions

DEFAULT_PORT = 5432


class ResolveError(OSError):
    """The database's host name did not resolve; the message names the host."""


def libpq_address(dsn: str) -> dict[str, str]:
    """``host`` and ``hostaddr`` keywords for ``psycopg2.connect``, or ``{}`` when there is no
    name to resolve (an IP address, a Unix socket, ``hostaddr`` already given, several
    hosts — left to libpq as written)."""
    params = psycopg2.extensions.parse_dsn(dsn)
    host = params.get("host", "")
    port = params.get("port", "")
    if not host or "hostaddr" in params or "," in host or "," in port:
        return {}
    if host.startswith("/") or host.startswith("@"):  # a Unix socket directory
        return {}
    try:
        ipaddress.ip_address(host)
        return {}
    except ValueError:
        pass
    try:
        infos = gevent.get_hub().resolver.getaddrinfo(
            host, int(port or DEFAULT_PORT), 0, socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise ResolveError(f"cannot resolve database host {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ResolveError(f"cannot resolve database host {host!r}: no address")
    return {"host": ",".join([host] * len(addresses)), "hostaddr": ",".join(addresses)}
