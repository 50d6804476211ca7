"""Shared fixtures: one PostgreSQL for the whole test session, with relay's schema installed.

``DATABASE_URL`` in the environment wins (CI against a real server); otherwise an embedded
PostgreSQL starts in a temporary directory and stops when the session ends.

Two layers: tests marked ``slow`` boot real processes (PostgreSQL, gunicorn, a relay, node,
Chromium) or fuzz with hundreds of examples; the rest run in-process, in seconds:
``pytest -m "not slow"`` is the quick loop, ``pytest`` (``make test``) runs both. A test
that asks for one of the fixtures below without the marker stops the collection, so the
quick loop never starts a database by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.dev.postgres import EmbeddedPostgres
from relay.schema import install_schema
from tests.support import RelayProcess

# Fixtures that start PostgreSQL or a relay (directly or through another fixture).
_PROCESS_FIXTURES = frozenset({"postgres_url", "schema_installed", "relay", "relay_factory",
                               "own_postgres", "outbox_off"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items
                if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(
            "these tests start PostgreSQL or a relay but are not marked @pytest.mark.slow:\n  "
            + "\n  ".join(unmarked))


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def schema_installed(postgres_url: str) -> list[str]:
    return install_schema(postgres_url, examples=True)


@pytest.fixture
def outbox_off(postgres_url: str, schema_installed: list[str]) -> Iterator[str]:
    """The session's database with relay's outbox off (``relay.set('outbox', 'off')``) for
    one test: listeners number messages in memory, as before the durable history. Tests of
    that mode's own rules (a cursor dies with its listener, a bounded in-memory history) use
    it; the default is the outbox on."""
    from tests.support import execute

    execute(postgres_url, "SELECT relay.set('outbox', 'off')")
    try:
        yield postgres_url
    finally:
        execute(postgres_url, "SELECT relay.set('outbox', 'on')")


# ----- a real relay: gunicorn master, 2 workers, supervisor, listener -----


@pytest.fixture(scope="module")
def relay(postgres_url: str, schema_installed: list[str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay shared by a test module (tests must not break it)."""
    process = RelayProcess(postgres_url, tmp_path_factory.mktemp("relay"))
    process.start()
    try:
        yield process
    finally:
        process.shut_down()


@pytest.fixture
def relay_factory(postgres_url: str, schema_installed: list[str],
                  tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start relays with their own settings; every one is stopped after the test."""
    started: list[RelayProcess] = []

    def start(env: dict[str, str] | None = None, workers: int = 2,
              wait: bool = True) -> RelayProcess:
        process = RelayProcess(postgres_url, tmp_path / f"relay{len(started)}", workers, env)
        started.append(process)
        return process.start(wait=wait)

    yield start
    for process in started:
        process.shut_down()


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A database of the test's own on the session's server, with nothing of relay in it
    (what an app's database looks like before ``relay db install``)."""
    import secrets

    import psycopg2
    from psycopg2 import sql
    from psycopg2.extensions import make_dsn

    from tests.support import execute

    name = f"relay_empty_{secrets.token_hex(4)}"
    try:
        execute(postgres_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        pytest.skip("the test role may not CREATE DATABASE")
    try:
        yield make_dsn(postgres_url, dbname=name)
    finally:
        execute(postgres_url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own, which it may stop, restart or break."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("fault tests restart PostgreSQL: they need the embedded server "
                    "(DATABASE_URL is set)")
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    install_schema(server.url, examples=True)
    try:
        yield server
    finally:
        server.stop("immediate")
