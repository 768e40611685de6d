"""Fixtures of the acceptance suite: real ``processflow serve`` processes,
one per database engine and module, each on its own migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.server import ServerProcess, start_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_databases: SqliteDatabases,
    postgres_databases: PostgresDatabases | str,
) -> Iterator[ServerProcess]:
    """A running server on a migrated database of each engine."""
    directory = tmp_path_factory.mktemp(f"served-{request.param}")
    if request.param == "sqlite":
        url = sqlite_databases.new(directory)
    else:
        if isinstance(postgres_databases, str):
            pytest.fail(f"PostgreSQL unavailable: {postgres_databases}")
        url = postgres_databases.new()
    server = start_server(url, Path(directory) / "server")
    try:
        yield server
    finally:
        code = server.terminate()
        assert code == 0, server.stderr[-3000:]
