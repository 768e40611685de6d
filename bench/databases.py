"""Throwaway PostgreSQL databases: created for one run, dropped after it."""

from __future__ import annotations

import os
import uuid
from types import TracebackType

import psycopg
from sqlalchemy.engine import make_url

from processflow import migrate

ADMIN_URL = os.environ.get(
    "PROCESSFLOW_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def conninfo(url: str) -> str:
    """A libpq URL (no SQLAlchemy driver suffix) for psycopg."""
    return (
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


class Databases:
    """Creates databases named ``pf_bench_*`` and drops every one of them on exit."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.run_id = uuid.uuid4().hex[:8]
        self._created: list[str] = []

    def __enter__(self) -> Databases:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop_all()

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(conninfo(self.admin_url), autocommit=True)

    def server_version(self) -> str:
        with self._admin() as connection:
            row = connection.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def url_for(self, name: str) -> str:
        return (
            make_url(self.admin_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    def create(self, role: str) -> str:
        """An empty database; ``role`` only makes its name readable."""
        name = f"pf_bench_{self.run_id}_{role}"
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self.url_for(name)

    def create_migrated(self, role: str, legacy_url: str | None = None) -> str:
        url = self.create(role)
        migrate.upgrade(url, legacy_url)
        return url

    def drop_all(self) -> None:
        with self._admin() as connection:
            for name in reversed(self._created):
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.clear()
