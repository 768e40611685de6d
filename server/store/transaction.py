"""The transaction boundary: one write transaction per call, driver errors
translated into domain errors in exactly one place.

A write runs inside ``WriteContext``: one connection in one transaction, one
clock reading, the outbox events collected so far and the sessions touched.
Statements whose results the write does not read (row writes decided in
Python, the request record, the outbox events) are deferred and sent just
before commit; on PostgreSQL they go out in one pipeline together with the
COMMIT, so they cost one round trip. Bulk rows (an Ingest's) go in with
COPY on PostgreSQL, before that pipeline. The rows and their events commit
together or not at all. On PostgreSQL the write's statements run on psycopg
directly (driver.py).

The server's engine has no pre-ping: a pooled connection that died (the
database restarted) fails the first statement, SQLAlchemy invalidates it and
the pool, and the whole transaction runs once more on a fresh connection.
That retry happens only before the final pipeline, which carries the
COMMIT, so nothing can be applied twice; a connection lost in that pipeline
surfaces as Unavailable (the outcome is unknown, and a retry with the same
request_id is safe).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from google.protobuf.message import Message
from psycopg.types.json import Jsonb

from processflow.db import driver_cursor, sqlalchemy_error
from processflow.v1 import events_pb2
from server.errors import Unavailable
from server.store import driver
from server.store.convert import to_timestamp
from server.validation import Limits

log = logging.getLogger(__name__)

T = TypeVar("T")

NOTIFY_CHANNEL = "processflow_outbox"
APPLIED_CHANNEL = "processflow_applied"


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turns connectivity failures of the driver into Unavailable.

    Every other database error is a bug or a constraint we did not foresee and
    surfaces as INTERNAL through the servicer boundary.
    """
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        log.warning(
            "database unavailable: %s",
            type(error.orig).__name__ if error.orig is not None else error,
            extra={"event": "database_unavailable"},
        )
        raise Unavailable("the database is unavailable; retry later") from error
    except sa.exc.DBAPIError as error:
        if error.connection_invalidated:
            raise Unavailable(
                "the database connection was lost; retry later"
            ) from error
        raise
    except sa.exc.TimeoutError as error:
        raise Unavailable("no database connection free; retry later") from error


def fingerprint(method: str, request: Message) -> str:
    """sha256 of the method name and the deterministic serialization."""
    digest = hashlib.sha256(method.encode("ascii") + b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def content_fingerprint(method: str, request: Message) -> str:
    """The fingerprint of a request without its request_id (a client id's content)."""
    if not request.request_id:  # type: ignore[attr-defined]
        return fingerprint(method, request)
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return fingerprint(method, copy)


@dataclass
class WriteContext:
    connection: sa.Connection
    tenant_id: str
    now: Any
    limits: Limits
    postgresql: bool
    events: list[events_pb2.OutboxEvent] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    deferred: list[tuple[Any, Any]] = field(default_factory=list)
    # Whether a statement of the write has run (the first one carries BEGIN).
    started: bool = False

    def rows(self, statement: Any, parameters: Mapping[str, Any]) -> list[Any]:
        """Runs ``statement`` now and returns its rows (see driver.py)."""
        begin, self.started = self.postgresql and not self.started, True
        return driver.fetch_rows(self.connection, statement, parameters, begin=begin)

    def rows_together(
        self, queries: Sequence[tuple[Any, Mapping[str, Any]]]
    ) -> list[list[Any]]:
        """Runs ``queries`` in order in one round trip; each one's rows."""
        begin, self.started = self.postgresql and not self.started, True
        return driver.fetch_together(self.connection, queries, begin=begin)

    def defer(self, statement: Any, parameters: Any = None) -> None:
        """Runs ``statement`` just before commit, after every statement the
        write executes itself and in the order deferred."""
        self.deferred.append((statement, parameters))

    @functools.cached_property
    def now_timestamp(self) -> Any:
        """``now`` as a protobuf Timestamp (every event of the write has it)."""
        return to_timestamp(self.now)


def copy_rows(
    context: WriteContext, table: sa.Table, rows: list[dict[str, Any]]
) -> None:
    """Inserts ``rows`` (dicts with the same keys) with COPY, now; PostgreSQL
    only. Driver errors are raised as SQLAlchemy's, as an INSERT's would be."""
    if not rows:
        return
    names = list(rows[0])
    json_names = {column.name for column in table.c if isinstance(column.type, sa.JSON)}
    dialect = context.connection.dialect
    quote = dialect.identifier_preparer.quote
    statement = (
        f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    )
    wrap = [name in json_names for name in names]
    with (
        driver_cursor(context.connection, statement) as cursor,
        cursor.copy(statement) as copy,
    ):
        for row in rows:
            copy.write_row(
                [
                    Jsonb(value) if json and value is not None else value
                    for json, value in zip(wrap, row.values(), strict=True)
                ]
            )


def execute_deferred(context: WriteContext) -> None:
    for statement, parameters in context.deferred:
        driver.execute(context.connection, statement, parameters)
    context.deferred.clear()


class _LostBeforeCommit(Exception):
    """The connection died before the COMMIT was sent: safe to run again."""

    def __init__(self, error: sa.exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


def _send_and_commit(context: WriteContext, transaction: sa.RootTransaction) -> None:
    """Runs the deferred statements and commits. On PostgreSQL both go out in
    one pipeline with the COMMIT queued like the writes, so that the
    pipeline's one sync answers for all of them (psycopg's own commit() would
    sync once more: a round trip)."""
    connection = context.connection
    if not context.postgresql:
        execute_deferred(context)
        transaction.commit()
        return
    dbapi = connection.connection.driver_connection
    assert isinstance(dbapi, psycopg.Connection)
    try:
        with dbapi.pipeline():
            execute_deferred(context)
            dbapi.execute(b"COMMIT")
    except psycopg.OperationalError as error:
        # Lost while the writes and the COMMIT were on their way: whether
        # they committed is unknown, and the connection is unusable.
        connection.invalidate(error)
        raise Unavailable("the database connection was lost; retry later") from error
    except BaseException as error:
        # The writes failed (a key taken by a concurrent writer, say): the
        # COMMIT did not run, and the connection must not go back to the pool
        # inside the aborted transaction.
        if dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                dbapi.rollback()
        if isinstance(error, psycopg.Error):
            raise sqlalchemy_error(connection, "COMMIT", error) from error
        raise
    # The transaction is over on the server; this ends SQLAlchemy's record
    # of it (psycopg sends nothing for it).
    transaction.commit()


def _attempt(
    engine: sa.Engine,
    begin: Callable[[sa.Connection], WriteContext],
    work: Callable[[WriteContext], Any],
    flush: Callable[[WriteContext], None],
) -> tuple[Any, frozenset[str]]:
    committing = False
    try:
        with engine.connect() as connection:
            try:
                with connection.begin() as transaction:
                    context = begin(connection)
                    result = work(context)
                    flush(context)
                    # From here on the COMMIT may be on its way: a lost
                    # connection leaves the outcome unknown, and the write
                    # must not run again.
                    committing = True
                    _send_and_commit(context, transaction)
            finally:
                driver.hand_begin_back(connection)
    except sa.exc.DBAPIError as error:
        if error.connection_invalidated and not committing:
            raise _LostBeforeCommit(error) from error
        raise
    return result, frozenset(context.touched)


def run_in_transaction(
    engine: sa.Engine,
    begin: Callable[[sa.Connection], WriteContext],
    work: Callable[[WriteContext], Any],
    flush: Callable[[WriteContext], None],
) -> tuple[Any, frozenset[str]]:
    """Runs ``work``, ``flush`` (which may defer statements too) and the
    deferred statements in one transaction; returns the result and the
    sessions the transaction touched (for the commit listeners)."""
    with translate_errors():
        try:
            return _attempt(engine, begin, work, flush)
        except _LostBeforeCommit:
            log.warning(
                "database connection lost before commit; running the write again",
                extra={"event": "write_retried_after_disconnect"},
            )
        try:
            return _attempt(engine, begin, work, flush)
        except _LostBeforeCommit as lost:
            raise lost.error from lost.error.orig


def run_read(engine: sa.Engine, read: Callable[[sa.Connection], T]) -> T:
    """Runs ``read`` on a pooled connection; once more on a fresh one when the
    pooled connection turns out to be dead (a read is always safe to repeat)."""
    with translate_errors():
        try:
            with engine.connect() as connection:
                return read(connection)
        except sa.exc.DBAPIError as error:
            if not error.connection_invalidated:
                raise
        with engine.connect() as connection:
            return read(connection)
