"""Supply chain (security review, finding 9): every runtime dependency, indirect ones
included, is pinned with its hashes in a lock file compiled from requirements.in; the
development lock ships exactly the same runtime packages; the image's base is pinned by
digest and installs with --require-hashes."""

from __future__ import annotations

import re

from tests.support import ROOT

_PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[a-z,]+\])?==([^\s\\]+)")


def _locked(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``package → (version, hashes)`` of a pip-compile lock file."""
    packages: dict[str, tuple[str, frozenset[str]]] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text())
    for entry in entries:
        if entry.startswith("#") or not entry.strip():
            continue
        pin = _PIN.match(entry)
        assert pin, f"{name}: not pinned with ==: {entry.splitlines()[0]}"
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
        assert hashes, f"{name}: {pin[1]} has no hash"
        packages[_normal(pin[1])] = (pin[2], hashes)
    return packages


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(name: str) -> dict[str, str]:
    wanted = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pin = _PIN.match(line)
            assert pin, f"{name}: {line!r} is not pinned with =="
            wanted[_normal(pin[1].split("[")[0])] = pin[2]
    return wanted


def test_every_runtime_dependency_is_pinned_with_hashes() -> None:
    locked = _locked("requirements.txt")
    for package, version in _wanted("requirements.in").items():
        assert locked[package][0] == version, package
    # The indirect ones too (Flask's, gunicorn's, gevent's): the lock is the whole closure.
    assert {"jinja2", "markupsafe", "itsdangerous", "click", "blinker", "zope-interface",
            "zope-event", "packaging"} <= set(locked)


def test_development_installs_exactly_the_runtime_packages_it_tests() -> None:
    runtime, development = _locked("requirements.txt"), _locked("requirements-dev.txt")
    for package, (version, hashes) in runtime.items():
        assert development[package][0] == version, package
        assert development[package][1] == hashes, package
    for package, version in _wanted("requirements-dev.in").items():
        assert development[package][0] == version, package


def test_the_image_is_pinned_by_digest_and_installs_only_hashed_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", base), base
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.txt" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements-dev.txt" in makefile
