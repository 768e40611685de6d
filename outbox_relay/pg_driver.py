"""The psycopg cursor under a SQLAlchemy connection, for the few statements
SQLAlchemy has no form for (COPY) or whose rows are the batch's hottest
(the claim).

Statements run here share the connection's open transaction. Their errors
leave as SQLAlchemy's exceptions, exactly as if SQLAlchemy had run them, so
that the relay tells an outage, a conflict and a bad event apart in one
place (outbox_relay.batch) whichever way a statement was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa


@contextmanager
def driver_cursor(
    connection: sa.Connection, statement: str
) -> Iterator[psycopg.Cursor]:
    """A cursor for ``statement`` (named in any error it raises)."""
    dbapi = connection.connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError("driver_cursor needs a psycopg connection")
    try:
        with dbapi.cursor() as cursor:
            yield cursor
    except psycopg.Error as error:
        invalidated = connection.dialect.is_disconnect(error, dbapi, None)
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            error,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=connection.dialect,
        ) from error
