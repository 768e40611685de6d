"""The migrations build exactly the schema the SQLAlchemy metadata declares,
on every engine, and running them again changes nothing."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from outbox_relay import legacy_schema
from processflow import migrate
from processflow.db import create_engine
from server import schema

VIEWS = {"process_flow_session_summary", "process_flow_step_performance"}
VERSION_TABLES = {migrate.MAIN_VERSION_TABLE, migrate.LEGACY_VERSION_TABLE}


def _schema_differences(url: str, metadata: sa.MetaData) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_object": lambda obj, name, kind, reflected, other: (
                        not (kind == "table" and name in VERSION_TABLES | VIEWS)
                    ),
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _snapshot(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {
            name: sorted(c["name"] for c in inspector.get_columns(name))
            for name in inspector.get_table_names() + inspector.get_view_names()
        }
    finally:
        engine.dispose()


def _combined_metadata() -> sa.MetaData:
    combined = sa.MetaData()
    for table in [
        *schema.metadata.tables.values(),
        *legacy_schema.metadata.tables.values(),
    ]:
        table.to_metadata(combined)
    return combined


def test_migrations_match_metadata_and_are_idempotent(
    pg_empty_url: str, sqlite_url: str
) -> None:
    for url in (pg_empty_url, sqlite_url):
        migrate.upgrade(url)
        first = _snapshot(url)
        migrate.upgrade(url)
        assert _snapshot(url) == first
        assert set(first) >= VIEWS
        assert _schema_differences(url, _combined_metadata()) == []
        assert migrate.is_up_to_date(url)


def test_separate_legacy_database_on_mariadb(sqlite_url: str, mariadb_url: str) -> None:
    migrate.upgrade(sqlite_url, mariadb_url)
    migrate.upgrade(sqlite_url, mariadb_url)
    tables = set(_snapshot(mariadb_url))
    assert {t.name for t in legacy_schema.LEGACY_TABLES} <= tables
    assert not any(name.startswith("process_flow_") for name in tables)
    assert _schema_differences(mariadb_url, legacy_schema.metadata) == []


def test_existing_legacy_table_is_left_alone(pg_empty_url: str) -> None:
    engine = create_engine(pg_empty_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            'CREATE TABLE "LLMUsageLogs" ("Id" BIGINT PRIMARY KEY, "Extra" TEXT)'
        )
        connection.exec_driver_sql("INSERT INTO \"LLMUsageLogs\" VALUES (1, 'kept')")
    migrate.upgrade(pg_empty_url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql('SELECT * FROM "LLMUsageLogs"').all()
    engine.dispose()
    assert rows == [(1, "kept")]
