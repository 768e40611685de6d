"""Relay test helpers: database pairs (outbox, legacy) on every engine
combination the relay supports, settings with short waits, legacy reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_relay import legacy_schema
from outbox_relay.settings import RelaySettings
from processflow import migrate
from processflow.db import create_engine

# outbox engine + where the legacy tables live
TARGETS = (
    "sqlite",
    "postgresql",
    "postgresql+postgresql",
    "postgresql+mariadb",
)


@dataclass(frozen=True)
class Target:
    database_url: str
    legacy_database_url: str | None

    @property
    def legacy_url(self) -> str:
        return self.legacy_database_url or self.database_url

    def settings(self, **overrides: Any) -> RelaySettings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "legacy_database_url": self.legacy_database_url,
            "batch_size": 100,
            "poll_interval_seconds": 0.05,
            "retry_initial_seconds": 0.01,
            "retry_max_seconds": 0.05,
            "max_attempts": 3,
            "outage_report_interval_seconds": 0.5,
            "shutdown_grace_seconds": 5.0,
        }
        values.update(overrides)
        return RelaySettings(**values)


def make_target(request: pytest.FixtureRequest, kind: str) -> Target:
    """Builds the databases of ``kind`` (one of TARGETS), migrated."""
    if kind == "sqlite":
        return Target(str(request.getfixturevalue("sqlite_url")), None)
    main = str(request.getfixturevalue("pg_url"))
    if kind == "postgresql":
        return Target(main, None)
    if kind == "postgresql+postgresql":
        databases = request.getfixturevalue("postgres_databases")
        legacy = databases.new(migrated=False)
        request.addfinalizer(lambda: databases.drop(legacy))
    elif kind == "postgresql+mariadb":
        legacy = str(request.getfixturevalue("mariadb_url"))
    else:
        raise ValueError(kind)
    migrate.upgrade(main, legacy)
    return Target(main, legacy)


def legacy_rows(url: str, table_name: str, *order_by: str) -> list[dict[str, Any]]:
    table = legacy_schema.metadata.tables[table_name]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(table).order_by(*(table.c[name] for name in order_by))
            return [dict(row._mapping) for row in connection.execute(query)]
    finally:
        engine.dispose()


def count_rows(url: str, table_name: str) -> int:
    table = legacy_schema.metadata.tables[table_name]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(table)
                ).scalar_one()
            )
    finally:
        engine.dispose()
