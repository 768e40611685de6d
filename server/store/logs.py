"""Log lines: AppendLogs, and the lines RecordStep appends in the same call."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.errors import FieldViolation, InvalidArgument
from server.store.convert import (
    LOG_LEVEL_WORDS,
    log_message,
    struct_to_dict,
    to_datetime,
)
from server.store.sessions import lock_session
from server.store.transaction import WriteContext

L = schema.logs
STEPS = schema.steps


def select_missing_step_ids(
    context: WriteContext, session_id: str, step_ids: Iterable[str]
) -> set[str]:
    wanted = set(step_ids)
    if not wanted:
        return set()
    statement = sa.select(STEPS.c.step_id).where(
        STEPS.c.session_id == session_id, STEPS.c.step_id.in_(sorted(wanted))
    )
    found = set(context.connection.execute(statement).scalars())
    return wanted - found


def log_rows(
    context: WriteContext,
    session_id: str,
    logs: Sequence[pb.LogInput],
    *,
    default_step_id: str | None,
    known_step_ids: frozenset[str],
    checked_step_ids: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The rows for ``logs``; InvalidArgument naming ``logs[i].step_id`` for a
    line whose step does not exist in the session. Steps neither in
    ``known_step_ids`` nor in ``checked_step_ids`` (looked for already, and
    missing) are looked up."""
    referenced = {log.step_id for log in logs if log.step_id} - known_step_ids
    missing = referenced & checked_step_ids
    missing |= select_missing_step_ids(context, session_id, referenced - missing)
    if missing:
        raise InvalidArgument(
            [
                FieldViolation(
                    f"logs[{index}].step_id",
                    f"no step {log.step_id!r} in session {session_id!r}",
                )
                for index, log in enumerate(logs)
                if log.step_id in missing
            ]
        )
    return [
        {
            "session_id": session_id,
            "step_id": log.step_id or default_step_id,
            "log_level": LOG_LEVEL_WORDS.get(log.level, "Info"),
            "message": log.message,
            "details": struct_to_dict(log.details) if log.HasField("details") else None,
            "exception": log.exception or None,
            "source": log.source or None,
            "timestamp": to_datetime(log.timestamp)
            if log.HasField("timestamp")
            else context.now,
            "created_at": context.now,
            "updated_at": context.now,
        }
        for log in logs
    ]


@functools.cache
def _insert_logs_statement() -> Any:
    return L.insert().inline()


@functools.cache
def _insert_logs_returning_statement() -> Any:
    return L.insert().returning(L.c.id, sort_by_parameter_order=True)


def defer_insert_logs(context: WriteContext, rows: list[dict[str, Any]]) -> None:
    if rows:
        context.defer(_insert_logs_statement(), rows)


def insert_logs_returning_ids(
    context: WriteContext, rows: list[dict[str, Any]]
) -> list[int]:
    if not rows:
        return []
    result = context.connection.execute(_insert_logs_returning_statement(), rows)
    return [int(i) for i in result.scalars()]


def append_logs(
    context: WriteContext, request: pb.AppendLogsRequest
) -> pb.AppendLogsResponse:
    lock_session(context, request.session_id)
    rows = log_rows(
        context,
        request.session_id,
        request.logs,
        default_step_id=None,
        known_step_ids=frozenset(),
    )
    ids = insert_logs_returning_ids(context, rows)
    entries: list[res.LogEntry] = []
    for log_id, row in zip(ids, rows, strict=True):
        entries.append(log_message({**row, "id": log_id}))
    return pb.AppendLogsResponse(logs=entries)
