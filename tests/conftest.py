"""Fixtures shared by every suite: real PostgreSQL, SQLite and MariaDB databases.

Under CI (CI=true) a missing PostgreSQL or MariaDB fails the run instead of
skipping tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import (
    PostgresDatabases,
    SqliteDatabases,
    ThrowawayCluster,
    drop_mariadb_database,
    find_postgres,
    mariadb_problem,
    new_mariadb_database,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases | str]:
    url, how, cluster = find_postgres()
    if url is None:
        print(f"\nPostgreSQL tests skipped: {how}")
        yield how
        return
    databases = PostgresDatabases(url)
    try:
        yield databases
    finally:
        databases.close()
        if isinstance(cluster, ThrowawayCluster):
            cluster.stop()


@pytest.fixture
def pg_url(postgres_databases: PostgresDatabases | str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    if isinstance(postgres_databases, str):
        _unavailable(f"PostgreSQL unavailable: {postgres_databases}")
        raise AssertionError("unreachable")
    url = postgres_databases.new()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture
def pg_empty_url(postgres_databases: PostgresDatabases | str) -> Iterator[str]:
    """A fresh PostgreSQL database with no tables."""
    if isinstance(postgres_databases, str):
        _unavailable(f"PostgreSQL unavailable: {postgres_databases}")
        raise AssertionError("unreachable")
    url = postgres_databases.new(migrated=False)
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
def sqlite_url(sqlite_databases: SqliteDatabases, tmp_path: Path) -> str:
    """A fresh, migrated SQLite file for one test."""
    return sqlite_databases.new(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh, empty MariaDB database (for the legacy tables)."""
    problem = mariadb_problem()
    if problem:
        _unavailable(f"MariaDB unavailable: {problem}")
    url = new_mariadb_database()
    try:
        yield url
    finally:
        drop_mariadb_database(url)
