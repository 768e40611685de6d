"""Applies the Alembic history to the main database and, when the legacy
tables live elsewhere, to the legacy database.

One history serves both: each revision upgrades the parts whose role is
being migrated (``main``: process_flow_* tables, outbox, views; ``legacy``:
legacy tables and the relay's ledger). With a single database both roles run
in one pass. The legacy database keeps its own version table so that it can
never collide with an Alembic history of the legacy application.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from processflow.db import create_engine, normalize_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MAIN_VERSION_TABLE = "process_flow_alembic_version"
LEGACY_VERSION_TABLE = "processflow_legacy_alembic_version"


def alembic_config(url: str, roles: frozenset[str], version_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = normalize_url(url)
    config.attributes["roles"] = roles
    config.attributes["version_table"] = version_table
    return config


def _targets(
    database_url: str, legacy_database_url: str | None
) -> list[tuple[str, frozenset[str], str]]:
    if not legacy_database_url or normalize_url(legacy_database_url) == normalize_url(
        database_url
    ):
        return [(database_url, frozenset({"main", "legacy"}), MAIN_VERSION_TABLE)]
    return [
        (database_url, frozenset({"main"}), MAIN_VERSION_TABLE),
        (legacy_database_url, frozenset({"legacy"}), LEGACY_VERSION_TABLE),
    ]


def upgrade(database_url: str, legacy_database_url: str | None = None) -> None:
    """Brings every database to the newest revision; running it again is a no-op."""
    for url, roles, version_table in _targets(database_url, legacy_database_url):
        command.upgrade(alembic_config(url, roles, version_table), "head")
        log.info(
            "database migrated",
            extra={"event": "database_migrated", "roles": sorted(roles)},
        )


def head_revision() -> str:
    script = ScriptDirectory.from_config(
        alembic_config("sqlite://", frozenset(), MAIN_VERSION_TABLE)
    )
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(
    engine: sa.Engine, version_table: str = MAIN_VERSION_TABLE
) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": version_table}
        )
        return context.get_current_revision()


def is_up_to_date(database_url: str) -> bool:
    engine = create_engine(database_url)
    try:
        return current_revision(engine) == head_revision()
    finally:
        engine.dispose()
