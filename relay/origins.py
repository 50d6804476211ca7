"""Which browser origins may open ``/ws``: ``ALLOWED_ORIGINS``, parsed once and matched strictly.

``config`` parses the setting into an ``OriginPolicy`` (refusing, with one line, an entry that
is not an origin or a safe pattern); the worker's handshake asks ``policy.allows(origin)``
for every upgrade that carries an ``Origin`` header.

An entry is an exact origin (``https://app.example.com``, ``http://localhost:3000``) or a
pattern with one ``*`` in the host's leftmost label, standing for a whole label
(``https://*.example.com``) or for part of one (``https://myapp-*-myteam.vercel.app``, the
shape of Vercel's preview URLs). The star stands for one or more of a DNS label's
characters (``a-z 0-9 -``): never a dot, so it never reaches into another label. Scheme and
port are exact (a default port is the same as none, as browsers send it).

A pattern directly under a public suffix would admit sites anyone can publish there:
``https://*.vercel.app`` is every Vercel site. Those are refused, and under a public suffix
a star needs fixed text on both sides (``myapp-*-myteam``). ``PUBLIC_SUFFIXES`` is a short
list of hosting suffixes taken from the Public Suffix List (https://publicsuffix.org/list/,
its PRIVATE section, checked against Debian's ``publicsuffix`` package of 2023-02-09) plus a
few common second-level country suffixes from its ICANN section; a single-label parent
(``*.com``, ``*.dev``) is refused whatever the list says.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

PUBLIC_SUFFIXES = frozenset({
    # hosting (PSL, PRIVATE section)
    "vercel.app", "vercel.dev", "now.sh", "fly.dev", "netlify.app", "pages.dev",
    "workers.dev", "github.io", "gitlab.io", "herokuapp.com", "onrender.com", "web.app",
    "firebaseapp.com", "appspot.com", "azurewebsites.net", "azurestaticapps.net",
    "cloudfront.net", "deno.dev", "glitch.me", "repl.co", "ngrok.io", "trycloudflare.com",
    "githubpreview.dev",
    # second-level country suffixes (PSL, ICANN section)
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "org.au", "co.nz", "co.jp",
    "com.br", "co.in", "com.cn", "com.mx", "co.za", "com.tr", "co.kr",
})

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# An exact host may hold underscores, which some DNS names do and browsers accept.
_EXACT_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LABEL_CHARS = re.compile(r"[a-z0-9-]+")
# scheme://host[:port], nothing else: no user info, path, query or fragment.
_ORIGIN = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[a-z0-9._*-]+)(?::([0-9]{1,5}))?")


class OriginError(ValueError):
    """An ``ALLOWED_ORIGINS`` entry that is neither an origin nor a safe pattern; ``str()``
    says why, in one line."""


@dataclass(frozen=True)
class OriginPattern:
    """``scheme://<prefix>*<suffix>.<parent>[:port]``."""

    scheme: str
    prefix: str
    suffix: str
    parent: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        label, dot, parent = host.partition(".")
        if not dot or parent != self.parent:
            return False
        middle_end = len(label) - len(self.suffix)
        if middle_end <= len(self.prefix) or not label.startswith(self.prefix) \
                or not label.endswith(self.suffix):
            return False
        return bool(_LABEL.fullmatch(label)) and bool(
            _LABEL_CHARS.fullmatch(label, len(self.prefix), middle_end))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.prefix}*{self.suffix}.{self.parent}{port}"


@dataclass(frozen=True)
class OriginPolicy:
    """The allowed origins: exact ones (a set lookup) and patterns."""

    exact: frozenset[str] = frozenset()
    patterns: tuple[OriginPattern, ...] = field(default=())

    def allows(self, origin: str) -> bool:
        """Whether a browser's ``Origin`` header value is allowed (``null`` never is)."""
        parsed = _parse(origin.strip().rstrip("/").lower())
        if parsed is None:
            return False
        scheme, host, port = parsed
        if _serialise(scheme, host, port) in self.exact:
            return True
        return any(p.matches(scheme, host, port) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)


def parse_origins(raw: str) -> OriginPolicy:
    """``ALLOWED_ORIGINS``: comma-separated entries; raise ``OriginError`` for a bad one."""
    exact: set[str] = set()
    patterns: list[OriginPattern] = []
    for item in raw.split(","):
        entry = item.strip().rstrip("/")
        if not entry:
            continue
        if "*" in entry:
            patterns.append(_pattern(entry))
        else:
            exact.add(_exact(entry))
    return OriginPolicy(frozenset(exact), tuple(dict.fromkeys(patterns)))


def _parse(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port or None for the default)`` of a lowercased origin, or None."""
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return None
    scheme, host, port_text = match.groups()
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port <= 65535:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return scheme, host, port


def _serialise(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _split(entry: str) -> tuple[str, str, int | None]:
    if not entry.isascii():
        raise OriginError(f"{entry!r}: write an international host in its ASCII form "
                          "(xn--…), as browsers send it")
    parsed = _parse(entry.lower())
    if parsed is None:
        raise OriginError(f"{entry!r} is not an origin (http:// or https://, a host and "
                          "an optional port; no path, user or query)")
    return parsed


def _exact(entry: str) -> str:
    scheme, host, port = _split(entry)
    if not (_is_ip(host) or all(_EXACT_LABEL.fullmatch(label) for label in host.split("."))):
        raise OriginError(f"{entry!r}: {host!r} is not a valid host name")
    return _serialise(scheme, host, port)


def _pattern(entry: str) -> OriginPattern:
    scheme, host, port = _split(entry)
    if entry.count("*") > 1:
        raise OriginError(f"{entry!r}: one '*' per origin")
    label, dot, parent = host.partition(".")
    if "*" not in label:
        raise OriginError(f"{entry!r}: '*' may stand only in the host's leftmost label "
                          "(https://*.example.com, https://app-*.example.com)")
    prefix, _, suffix = label.partition("*")
    labels = parent.split(".") if dot else []
    if not all(_LABEL.fullmatch(part) for part in labels) or (
            (prefix or suffix) and not _LABEL_CHARS.fullmatch(prefix + suffix)) or (
            label.startswith("-") or label.endswith("-")):
        raise OriginError(f"{entry!r}: not a valid host name pattern")
    if len(labels) < 2 and parent != "localhost":
        raise OriginError(f"{entry!r}: '*' needs a domain of yours under it "
                          "(https://*.example.com), not a top-level domain")
    if labels[-1].isdigit():
        raise OriginError(f"{entry!r}: '*' cannot stand in an IP address")
    if parent in PUBLIC_SUFFIXES and not (prefix and suffix):
        raise OriginError(
            f"{entry!r}: {parent} is a public suffix, where anyone can publish a site, so "
            f"this admits sites that are not yours; name your own (https://app.example.com) "
            f"or fix both sides of '*' (https://myapp-*-myteam.{parent})")
    return OriginPattern(scheme, prefix, suffix, parent, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return host.startswith("[") == (":" in host)  # IPv6 in brackets, IPv4 without
