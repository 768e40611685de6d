"""request_id records: the same request twice has one effect and one answer.

The record, with the answer, is written at the end of the write's
transaction as a plain INSERT (deferred, so on PostgreSQL it rides in the
COMMIT's round trip). A request seen before therefore fails that INSERT on
the primary key, and the store answers from the stored record instead (or
refuses a different request under the same id); the failed transaction
left nothing. A concurrent duplicate waits on the first one's uncommitted
key and then fails the same way; when the first rolls back, the duplicate
goes ahead as if it were first.

When the write itself fails (a domain error), the stored record is looked up
as well: a request seen before answers as the first time whatever the
state is now, exactly as if the record had been checked first.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message

from server import schema
from server.errors import AlreadyExists
from server.store.transaction import WriteContext

R = schema.requests


@functools.cache
def _insert_record_statement() -> Any:
    return R.insert().inline()


def record_values(
    context: WriteContext,
    request_id: str,
    method: str,
    request_fingerprint: str,
    response: Message,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "tenant_id": context.tenant_id,
        "method": method,
        "fingerprint": request_fingerprint,
        "response": response.SerializeToString(deterministic=True),
        "created_at": context.now,
    }


def defer_insert_records(context: WriteContext, records: list[dict[str, Any]]) -> None:
    if records:
        context.defer(_insert_record_statement(), records)


def select_request_records(
    connection: sa.Connection, tenant_id: str, request_ids: Iterable[str]
) -> dict[str, Any]:
    """The stored records of ``request_ids`` by request id."""
    wanted = sorted(set(request_ids))
    if not wanted:
        return {}
    statement = sa.select(R.c.request_id, R.c.fingerprint, R.c.response).where(
        R.c.tenant_id == tenant_id, R.c.request_id.in_(wanted)
    )
    return {row.request_id: row for row in connection.execute(statement)}


def stored_answer(record: Any, request_id: str, request_fingerprint: str) -> bytes:
    """The stored answer; AlreadyExists when the request_id was used for a
    different request."""
    if record.fingerprint != request_fingerprint:
        raise AlreadyExists(
            f"request_id {request_id!r} was already used for a different request"
        )
    return bytes(record.response)


def is_duplicate_key(error: sa.exc.IntegrityError, tables: Iterable[sa.Table]) -> bool:
    """Whether ``error`` is a unique violation on one of ``tables``."""
    names = {table.name for table in tables}
    diagnostics = getattr(error.orig, "diag", None)
    if diagnostics is not None:  # PostgreSQL
        return bool(
            getattr(error.orig, "sqlstate", None) == "23505"
            and diagnostics.table_name in names
        )
    message = str(error.orig)  # SQLite: "UNIQUE constraint failed: table.column"
    return message.startswith("UNIQUE constraint failed") and any(
        f" {name}." in message for name in names
    )
