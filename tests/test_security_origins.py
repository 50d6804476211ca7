"""ALLOWED_ORIGINS with patterns (issue 15, item 5): Vercel previews admitted, nothing else.

A ``*`` stands for a whole leftmost label or part of one, never across a dot; scheme and
port are exact; a pattern that would admit sites anyone can publish under a public suffix
(``*.vercel.app``) is refused at start-up with one line. The matcher is tested against a
reference (a regular expression written from the rule) on origins built to match and on
every small mutation of them, and on a real relay's handshake.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.config import ConfigError, Settings
from relay.origins import PUBLIC_SUFFIXES, OriginError, parse_origins
from tests.support import ROOT, SECRET, RelayProcess

BASE = {"DATABASE_URL": "postgresql://u@db.example.com/app", "WEBSOCKET_JWT_SECRET": SECRET}
VERCEL = "https://myapp-*-myteam.vercel.app"

LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
fills = st.text(LABEL_CHARS, min_size=1, max_size=20)
fixed = st.text(LABEL_CHARS, max_size=8)
ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
labels = st.one_of(st.text(ALNUM, min_size=1, max_size=1), st.builds(
    lambda a, mid, z: a + mid + z, st.sampled_from(ALNUM), st.text(LABEL_CHARS, max_size=6),
    st.sampled_from(ALNUM)))
parents = st.lists(labels, min_size=2, max_size=4).map(".".join).filter(
    lambda p: p not in PUBLIC_SUFFIXES and not p.split(".")[-1].isdigit())
schemes = st.sampled_from(["http", "https"])
ports = st.one_of(st.none(), st.integers(1, 65535))


@st.composite
def patterns(draw: st.DrawFn) -> tuple[str, str, str, str, str, int | None]:
    """(pattern text, scheme, prefix, suffix, parent, port) of a valid pattern."""
    scheme, prefix, suffix = draw(schemes), draw(fixed), draw(fixed)
    assume(not prefix.startswith("-") and not suffix.endswith("-"))
    parent, port = draw(parents), draw(ports)
    if port in (80, 443):
        port = None
    text = f"{scheme}://{prefix}*{suffix}.{parent}" + (f":{port}" if port else "")
    return text, scheme, prefix, suffix, parent, port


def reference(pattern: tuple[str, str, str, str, str, int | None], origin: str) -> bool:
    """The rule, written as a regular expression: ``*`` is one or more label characters,
    the label a valid DNS label, scheme, parent and port exactly as in the pattern."""
    _, scheme, prefix, suffix, parent, port = pattern
    port_part = f":{port}" if port else f"(:{ {'http': 80, 'https': 443}[scheme]})?"
    rule = (re.escape(f"{scheme}://{prefix}") + "[a-z0-9-]+" + re.escape(f"{suffix}.{parent}")
            + port_part.replace(" ", ""))
    label = origin.split("://", 1)[-1].split(".", 1)[0]
    valid_label = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) is not None
    return re.fullmatch(rule, origin) is not None and valid_label


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@settings(max_examples=300, deadline=None)
@given(patterns(), fills)
def test_a_pattern_admits_its_fills(pattern: tuple, fill: str) -> None:  # type: ignore[type-arg]
    text, scheme, prefix, suffix, parent, port = pattern
    origin = f"{scheme}://{prefix}{fill}{suffix}.{parent}" + (f":{port}" if port else "")
    assert parse_origins(text).allows(origin) == reference(pattern, origin)
    label = prefix + fill + suffix
    if len(label) <= 63 and not label.startswith("-") and not label.endswith("-"):
        assert parse_origins(text).allows(origin)
        assert parse_origins(text).allows(origin.upper())  # hosts are case-insensitive


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(patterns(), st.lists(fills, min_size=2, max_size=3))
def test_a_star_never_spans_a_dot(pattern: tuple, parts: list[str]) -> None:  # type: ignore[type-arg]
    text, scheme, prefix, suffix, parent, port = pattern
    origin = f"{scheme}://{prefix}{'.'.join(parts)}{suffix}.{parent}" + (
        f":{port}" if port else "")
    assert not parse_origins(text).allows(origin)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns(), fills, st.sampled_from([
    ".evil.com", ".", "-x", "x", ":1", "/", "@evil.com", "%2e", " , https://x.com"]),
    st.integers(0, 60), st.sampled_from(["insert", "delete", "replace", "append"]))
def test_every_near_miss_is_judged_as_the_rule_says(pattern: tuple, fill: str,  # type: ignore[type-arg]
                                                    junk: str, at: int, how: str) -> None:
    text, scheme, prefix, suffix, parent, port = pattern
    origin = f"{scheme}://{prefix}{fill}{suffix}.{parent}" + (f":{port}" if port else "")
    at = min(at, len(origin))
    mutated = {"insert": origin[:at] + junk + origin[at:],
               "delete": origin[:at] + origin[at + 1:],
               "replace": origin[:at] + junk + origin[at + 1:],
               "append": origin + junk}[how]
    assert parse_origins(text).allows(mutated) == reference(pattern, mutated.strip().rstrip(
        "/").lower())


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(patterns(), fills, schemes, ports)
def test_scheme_and_port_are_exact(pattern: tuple, fill: str, scheme: str,  # type: ignore[type-arg]
                                   port: int | None) -> None:
    text, own_scheme, prefix, suffix, parent, own_port = pattern
    assume((scheme, port) != (own_scheme, own_port))
    assume(port != {"http": 80, "https": 443}[scheme] or own_port is not None
           or scheme != own_scheme)
    origin = f"{scheme}://{prefix}{fill}{suffix}.{parent}" + (f":{port}" if port else "")
    assert not parse_origins(text).allows(origin)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(schemes, st.lists(labels, min_size=1, max_size=4).map(".".join), ports,
       st.text("abcdefghijklmnopqrstuvwxyz0123456789-.:/@[]", max_size=30))
def test_an_exact_origin_admits_itself_only(scheme: str, host: str, port: int | None,
                                            other: str) -> None:
    origin = f"{scheme}://{host}" + (f":{port}" if port else "")
    policy = parse_origins(origin)
    assert policy.allows(origin)
    candidate = origin + other
    normal = candidate.rstrip("/")
    if port in (80, 443) and port == {"http": 80, "https": 443}[scheme]:
        return
    assert policy.allows(candidate) == (normal == origin or (
        not port and normal == f"{origin}:{ {'http': 80, 'https': 443}[scheme]}".replace(
            " ", "")))


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://myapp-git-feature-myteam.vercel.app", True),
    ("https://myapp-h4sh123-myteam.vercel.app", True),
    ("https://myapp-x-myteam.vercel.app.evil.com", False),
    ("https://evil-x-myteam.vercel.app", False),
    ("http://myapp-git-feature-myteam.vercel.app", False),
    ("https://myapp-git-feature-myteam.vercel.app:8443", False),
    ("https://myapp--myteam.vercel.app", False),       # the star stands for something
    ("https://myapp-a.b-myteam.vercel.app", False),    # never a dot
    ("https://myapp-x-myteam.vercel.app.", False),
    ("https://myapp-x-myteam.vercel.app@evil.com", False),
    ("null", False),
])
def test_the_vercel_preview_pattern(origin: str, allowed: bool) -> None:
    assert parse_origins(VERCEL).allows(origin) is allowed


@pytest.mark.parametrize(("entry", "why"), [
    ("https://*.vercel.app", "vercel.app is a public suffix"),
    ("https://*.fly.dev", "fly.dev is a public suffix"),
    ("https://*.netlify.app", "public suffix"),
    ("https://*.pages.dev", "public suffix"),
    ("https://*.github.io", "public suffix"),
    ("https://*.herokuapp.com", "public suffix"),
    ("https://*.co.uk", "public suffix"),
    ("https://myapp-*.vercel.app", "fix both sides of '*'"),
    ("https://*-myteam.vercel.app", "fix both sides of '*'"),
    ("https://*.com", "not a top-level domain"),
    ("https://*", "not a top-level domain"),
    ("https://app.*.example.com", "leftmost label"),
    ("https://*.*.example.com", "one '*' per origin"),
    ("https://*.0.0.1", "IP address"),
    ("https://a_*.example.com", "not a valid host name pattern"),
    ("https://app.example.com/path", "not an origin"),
    ("ftp://app.example.com", "not an origin"),
    ("https://user@app.example.com", "not an origin"),
    ("https://app.example.com:99999", "not an origin"),
    ("app.example.com", "not an origin"),
    ("https://bücher.example", "ASCII form"),
    ("https://-app.example.com", "not a valid host name"),
])
def test_a_bad_entry_is_refused_with_the_reason(entry: str, why: str) -> None:
    with pytest.raises(OriginError, match=re.escape(why)):
        parse_origins(entry)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**BASE, "ALLOWED_ORIGINS": f"https://ok.example.com,{entry}"})
    line = str(refused.value)
    assert line.startswith("ALLOWED_ORIGINS: ") and "\n" not in line


def test_patterns_relay_can_take() -> None:
    policy = parse_origins(f"{VERCEL}, https://*.example.com ,http://*.localhost:3000,"
                           "https://app.example.com:443")
    assert policy.allows("https://preview.example.com")
    assert not policy.allows("https://a.preview.example.com")
    assert not policy.allows("https://example.com")
    assert policy.allows("http://tab1.localhost:3000")
    assert policy.allows("https://app.example.com")  # the default port is no port


@pytest.mark.slow
def test_gunicorn_refuses_a_public_suffix_pattern_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **BASE,
             "ALLOWED_ORIGINS": "https://*.vercel.app"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("relay: configuration error: ALLOWED_ORIGINS: "
                               "'https://*.vercel.app': vercel.app is a public suffix")


# ----- a real relay's handshake -----

@pytest.mark.slow
def test_a_relay_admits_previews_and_refuses_look_alikes(
        relay_factory: type[RelayProcess]) -> None:
    from tests.test_hostile_handshake import _request, _upgrade

    relay = relay_factory(env={"ALLOWED_ORIGINS": f"{VERCEL},https://*.example.com"})
    for origin, status in (
            ("https://myapp-git-feature-myteam.vercel.app", 101),
            ("https://myapp-4f9ab2c1d-myteam.vercel.app", 101),
            ("https://www.example.com", 101),
            ("https://myapp-x-myteam.vercel.app.evil.com", 403),
            ("https://evil-x-myteam.vercel.app", 403),
            ("http://myapp-git-feature-myteam.vercel.app", 403),
            ("https://a.b.example.com", 403),
            ("https://example.com", 403)):
        assert _request(relay, _upgrade(Origin=origin))[0] == status, origin
