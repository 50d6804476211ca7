"""Shared fixtures: one PostgreSQL for the whole test session, with relay's schema installed.

``DATABASE_URL`` in the environment wins (CI against a real server); otherwise an embedded
PostgreSQL starts in a temporary directory and stops when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from relay.devdb import EmbeddedPostgres
from relay.schema import install_schema


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
    return install_schema(postgres_url)
