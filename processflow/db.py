"""Engines for PostgreSQL (psycopg 3) and SQLite, configured the same way for
the server, the relay and the command-line tools."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import RowFactory
from sqlalchemy.engine import make_url


def normalize_url(url: str) -> str:
    """Picks psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername="mysql+pymysql")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine_or_url: sa.Engine | str) -> bool:
    url = (
        engine_or_url.url
        if isinstance(engine_or_url, sa.Engine)
        else make_url(engine_or_url)
    )
    return url.get_backend_name() == "sqlite"


def is_postgresql(engine: sa.Engine | sa.Connection) -> bool:
    return engine.dialect.name == "postgresql"


def create_engine(
    url: str, *, pool_size: int = 5, pre_ping: bool = True, **kwargs: Any
) -> sa.Engine:
    """``pre_ping=False`` saves a round trip at every checkout; only callers
    that retry a transaction on a lost connection themselves (the server's
    store, see server/store/transaction.py) should turn it off."""
    url = normalize_url(url)
    if is_sqlite(url):
        return _create_sqlite_engine(url, **kwargs)
    options: dict[str, Any] = {"pool_pre_ping": pre_ping, "pool_size": pool_size}
    if make_url(url).get_backend_name() == "postgresql":
        # Pin the session time zone: timestamps are naive UTC everywhere.
        options["connect_args"] = {"options": "-c timezone=UTC"}
    elif make_url(url).get_backend_name() == "mysql":
        options["connect_args"] = {"init_command": "SET time_zone = '+00:00'"}
    options.update(kwargs)
    return sa.create_engine(url, **options)


def _create_sqlite_engine(url: str, **kwargs: Any) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        **kwargs,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if make_url(url).database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # Take the write lock at BEGIN: a read that later upgrades to a write
        # would otherwise fail with SQLITE_BUSY instead of waiting.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def driver_cursor(
    connection: sa.Connection,
    statement: str,
    row_factory: RowFactory[Any] | None = None,
) -> Iterator[psycopg.Cursor[Any]]:
    """The psycopg cursor under a SQLAlchemy connection, inside its open
    transaction, for what SQLAlchemy has no form for (COPY) or where its row
    objects cost too much on a hot path.

    Errors leave as SQLAlchemy's exceptions, naming ``statement`` but not its
    parameters, exactly as if SQLAlchemy had run it; a lost connection is
    invalidated, so callers tell an outage, a conflict and bad data apart in
    one place whichever way a statement was sent.
    """
    dbapi = connection.connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError("driver_cursor needs a psycopg connection")
    try:
        with (
            dbapi.cursor(row_factory=row_factory) if row_factory else dbapi.cursor()
        ) as cursor:
            yield cursor
    except psycopg.Error as error:
        raise sqlalchemy_error(connection, statement, error) from error


def sqlalchemy_error(
    connection: sa.Connection, statement: str, error: psycopg.Error
) -> sa.exc.DBAPIError:
    """``error`` of the psycopg connection under ``connection`` as the
    exception SQLAlchemy would have raised for it (naming ``statement`` but
    not its parameters); invalidates the connection when it was lost."""
    failure: Any = error
    invalidated = connection.dialect.is_disconnect(
        failure, connection.connection.dbapi_connection, None
    )
    if invalidated:
        connection.invalidate(error)
    wrapped = sa.exc.DBAPIError.instance(
        statement,
        None,
        error,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=invalidated,
        dialect=connection.dialect,
    )
    assert isinstance(wrapped, sa.exc.DBAPIError)
    return wrapped


def utcnow() -> dt.datetime:
    """Naive UTC now, the form every timestamp column stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
