"""The write path's statements, run on psycopg directly on PostgreSQL.

SQLAlchemy builds every statement (one definition for both databases), but
running one through its engine costs more Python than psycopg does to send
it: ~100 µs a statement here, a quarter of a unary write's store time. On
PostgreSQL a write's statements are therefore compiled once per statement
and parameter names (`driver_form`, the same text SQLAlchemy itself would
send) and run on the psycopg connection inside the same transaction, with
SQLAlchemy's own bind processors applied to the values (JSON, booleans,
bytes), so the database sees exactly what it saw before. Rows come back as
named tuples. Driver errors leave as SQLAlchemy's exceptions (see
`processflow.db.driver_cursor`), so the transaction boundary treats both
paths alike.

A statement whose text depends on the values (an expanding IN) has no
driver form and runs through SQLAlchemy, as it does on SQLite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row

from processflow.db import driver_cursor, sqlalchemy_error


@dataclass(frozen=True)
class DriverForm:
    """A statement compiled for one set of parameter names."""

    compiled: Any
    sql: str
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    def bind(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The driver's parameters, exactly as SQLAlchemy would bind them."""
        values: dict[str, Any] = self.compiled.construct_params(
            parameters, _check=False
        )
        for name, process in self.processors:
            if name in values:
                values[name] = process(values[name])
        return values


@functools.lru_cache(maxsize=512)
def driver_form(
    dialect: sa.Dialect, statement: Any, names: tuple[str, ...]
) -> DriverForm | None:
    """``statement`` compiled for parameters named ``names`` (sorted); None
    when its text would depend on the values."""
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    if (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or compiled.positional
    ):
        return None
    processors = tuple(
        (name, process)
        for name, process in compiled._bind_processors.items()
        if process is not None
    )
    return DriverForm(compiled, compiled.string, processors)


def _form(
    connection: sa.Connection, statement: Any, first: Mapping[str, Any]
) -> DriverForm | None:
    if connection.dialect.name != "postgresql":
        return None
    return driver_form(connection.dialect, statement, tuple(sorted(first)))


def fetch_rows(
    connection: sa.Connection,
    statement: Any,
    parameters: Mapping[str, Any],
    *,
    begin: bool = False,
) -> list[Any]:
    """Runs ``statement`` and returns its rows; each row's columns are its
    attributes, whichever way the statement went. ``begin``: see
    fetch_together."""
    if begin:
        return fetch_together(connection, [(statement, parameters)], begin=True)[0]
    form = _form(connection, statement, parameters)
    if form is None:
        return list(connection.execute(statement, parameters))
    with driver_cursor(connection, form.sql, namedtuple_row) as cursor:
        cursor.execute(form.sql, form.bind(parameters))
        return cursor.fetchall()


def fetch_together(
    connection: sa.Connection,
    queries: Sequence[tuple[Any, Mapping[str, Any]]],
    *,
    begin: bool = False,
) -> list[list[Any]]:
    """Runs ``queries`` (statement, parameters) one after the other and
    returns the rows of each; on PostgreSQL in one pipeline, so that they cost
    one round trip. Each statement still starts after the one before it has
    finished.

    ``begin``: when these are the transaction's first statements, its BEGIN
    goes in the same pipeline. psycopg would send it ahead and wait for it
    (a round trip of its own), so it is told to leave BEGIN to us (its
    autocommit mode, which only decides whether it starts transactions)
    until `hand_begin_back` runs after the transaction."""
    found = [_form(connection, statement, first) for statement, first in queries]
    forms = [form for form in found if form is not None]
    if len(forms) < len(queries):
        return [fetch_rows(connection, statement, p) for statement, p in queries]
    dbapi = connection.connection.dbapi_connection
    assert isinstance(dbapi, psycopg.Connection)
    cursors: list[psycopg.Cursor[Any]] = []
    if begin and dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        dbapi.autocommit = True
    else:
        begin = False
    try:
        with dbapi.pipeline():
            if begin:
                dbapi.execute(b"BEGIN")
            for form, (_statement, parameters) in zip(forms, queries, strict=True):
                cursor = dbapi.cursor(row_factory=namedtuple_row)
                cursors.append(cursor)
                cursor.execute(form.sql, form.bind(parameters))
        return [cursor.fetchall() for cursor in cursors]
    except psycopg.Error as error:
        raise sqlalchemy_error(connection, forms[0].sql, error) from error
    finally:
        for cursor in cursors:
            cursor.close()


def hand_begin_back(connection: sa.Connection) -> None:
    """After a transaction that fetch_together began: psycopg starts the
    connection's transactions again. A connection still inside a transaction
    then (its rollback failed) is discarded, never pooled in autocommit."""
    if connection.invalidated or connection.closed:
        return
    dbapi = connection.connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection) or not dbapi.autocommit:
        return
    if dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        dbapi.autocommit = False
    else:
        connection.invalidate()


def execute(
    connection: sa.Connection,
    statement: Any,
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
) -> None:
    """Runs ``statement`` once, or once for each of ``parameters`` when it is
    a list; the rows it may return are not read."""
    if not parameters:
        connection.execute(statement, parameters)
        return
    rows = [parameters] if isinstance(parameters, Mapping) else list(parameters)
    form = _form(connection, statement, rows[0])
    if form is None or any(row.keys() != rows[0].keys() for row in rows[1:]):
        # Rows naming different columns are SQLAlchemy's to refuse or run.
        connection.execute(statement, parameters)
        return
    with driver_cursor(connection, form.sql) as cursor:
        if len(rows) == 1:
            cursor.execute(form.sql, form.bind(rows[0]))
        else:
            cursor.executemany(form.sql, [form.bind(row) for row in rows])
