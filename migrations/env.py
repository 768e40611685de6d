"""Alembic environment: run by processflow.migrate, which passes the URL, the
roles to migrate and the version table through ``config.attributes``."""

from __future__ import annotations

from alembic import context

from processflow.db import create_engine

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.attributes["url"])
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                version_table=config.attributes["version_table"],
                transactional_ddl=True,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations(roles=config.attributes["roles"])
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run processflow migrate")
run_migrations_online()
