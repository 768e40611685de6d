"""Writes of the session row: start, complete, and the per-session lock.

Every write of a session begins with ``lock_session``: an UPDATE of the
session row (which serialises writers of one session on PostgreSQL, and
bumps event_sequence by the events the caller expects to write, so that no
second UPDATE is needed) returning what the write needs, so that existence,
tenant and context cost one round trip. On PostgreSQL the same statement
queues the commit-time NOTIFY that wakes the relay and the watchers.

Scalar subqueries in the lock's RETURNING read the snapshot taken when the
statement started, before it may have waited for the lock: they must only
carry values for which a concurrent writer's change does not matter.

Statements are built once per dialect with bound parameters, so that each
call only binds values (SQLAlchemy's cache and psycopg's prepared
statements then apply).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from processflow.catalog import SQL_EXECUTION
from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from server import schema
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.store import outbox
from server.store.convert import (
    SESSION_STATUS_WORDS,
    confidence_decimal,
    duration_ms,
    session_message,
    struct_to_dict,
    to_datetime,
    to_timestamp,
)
from server.store.transaction import NOTIFY_CHANNEL, WriteContext, content_fingerprint

S = schema.sessions
DEFAULT_QUERY_TYPE = "enhanced"


SESSION_ID = sa.bindparam("b_session_id", type_=sa.String())
TENANT_ID = sa.bindparam("b_tenant_id", type_=sa.String())
BUMP = sa.bindparam("b_bump", type_=sa.BigInteger())


@dataclass(frozen=True)
class LockedSession:
    session_id: str
    event_sequence: int
    row: Any
    # The rows of the read run right after the lock (lock_session's ``then``).
    then_rows: list[Any]


def lock_statement(postgresql: bool, extra: tuple[Any, ...] = ()) -> Any:
    """The lock UPDATE returning the session's context and ``extra``; bind
    ``b_session_id``, ``b_tenant_id`` and ``b_bump``."""
    columns: list[Any] = [
        S.c.event_sequence,
        S.c.user_id,
        S.c.query_type,
        S.c.intent,
        S.c.status,
        S.c.start_time,
        *extra,
    ]
    if postgresql:
        columns.append(
            sa.func.pg_notify(NOTIFY_CHANNEL, S.c.session_id).label("notify")
        )
    return (
        S.update()
        .where(S.c.session_id == SESSION_ID, S.c.tenant_id == TENANT_ID)
        .values(event_sequence=S.c.event_sequence + BUMP)
        .returning(*columns)
    )


@functools.cache
def _plain_lock_statement(postgresql: bool) -> Any:
    return lock_statement(postgresql)


def lock_session(
    context: WriteContext,
    session_id: str,
    *,
    bump: int = 0,
    statement: Any = None,
    parameters: dict[str, Any] | None = None,
    then: tuple[Any, dict[str, Any]] | None = None,
) -> LockedSession:
    """Locks the session row, adds ``bump`` to its event sequence and returns
    the sequence after the bump with the session's context (``statement``,
    from lock_statement, chooses the extra columns); NotFound when the
    session does not exist for this tenant.

    ``then`` (a statement and its parameters) is a read that must see what
    was committed before the lock was granted: it runs after the lock, in
    the same round trip (on PostgreSQL each statement of a transaction takes
    its own snapshot when it starts)."""
    if statement is None:
        statement = _plain_lock_statement(context.postgresql)
    values = {
        "b_session_id": session_id,
        "b_tenant_id": context.tenant_id,
        "b_bump": bump,
        **(parameters or {}),
    }
    if then is None:
        rows, then_rows = context.rows(statement, values), []
    else:
        rows, then_rows = context.rows_together([(statement, values), then])
    if not rows:
        raise NotFound(f"session {session_id!r} not found")
    context.touched.add(session_id)
    return LockedSession(session_id, int(rows[0].event_sequence), rows[0], then_rows)


@functools.cache
def _bump_statement() -> Any:
    return (
        S.update()
        .where(S.c.session_id == SESSION_ID)
        .values(event_sequence=S.c.event_sequence + BUMP)
    )


def defer_bump_event_sequence(context: WriteContext, session_id: str, by: int) -> None:
    """Adds ``by`` to the (already locked) session's sequence at commit: the
    correction when the lock bumped for an event the write did not write."""
    context.defer(_bump_statement(), {"b_session_id": session_id, "b_bump": by})


def select_session_row(context: WriteContext, session_id: str) -> Any:
    statement = sa.select(S).where(
        S.c.session_id == session_id, S.c.tenant_id == context.tenant_id
    )
    return context.connection.execute(statement).mappings().one_or_none()


@functools.cache
def _insert_session_statement(postgresql: bool) -> Any:
    returning: list[Any] = [S.c.id]
    if postgresql:
        returning.append(sa.func.pg_notify(NOTIFY_CHANNEL, S.c.session_id))
    insert = postgresql_insert(S) if postgresql else sqlite_insert(S)
    return insert.on_conflict_do_nothing(index_elements=[S.c.session_id]).returning(
        *returning
    )


def new_session_values(
    context: WriteContext, request: pb.StartSessionRequest, session_id: str
) -> dict[str, Any]:
    """The row StartSession inserts (event_sequence 1: its one event)."""
    start_time = (
        to_datetime(request.start_time)
        if request.HasField("start_time")
        else context.now
    )
    return {
        "session_id": session_id,
        "tenant_id": context.tenant_id,
        "user_id": request.user_id,
        "query": request.query,
        "query_type": request.query_type or DEFAULT_QUERY_TYPE,
        "status": "running",
        "start_time": start_time,
        "end_time": None,
        "total_duration_ms": None,
        "overall_confidence": None,
        "generated_sql": None,
        "execution_result": None,
        "error_message": None,
        "metadata": struct_to_dict(request.metadata)
        if request.HasField("metadata")
        else None,
        "conversation_id": request.conversation_id or None,
        "message_id": request.message_id or None,
        "intent": request.intent or None,
        "domain": request.domain or None,
        "template": request.template or None,
        "tables_retrieved": list(request.tables_retrieved) or None,
        "start_fingerprint": content_fingerprint("StartSession", request),
        "completion_fingerprint": None,
        "event_sequence": 1,
        "completed_sequence": None,
        "completed_event": None,
        "created_at": context.now,
        "updated_at": context.now,
    }


def session_started(request: pb.StartSessionRequest, values: dict[str, Any]) -> Any:
    """The session_started event's payload."""
    return events_pb2.SessionStarted(
        user_id=request.user_id,
        query=request.query,
        query_type=values["query_type"],
        intent=request.intent,
        domain=request.domain,
        template=request.template,
        tables_retrieved=request.tables_retrieved,
        start_time=to_timestamp(values["start_time"]),
        conversation_id=request.conversation_id,
        message_id=request.message_id,
    )


def start_session(
    context: WriteContext, request: pb.StartSessionRequest
) -> pb.StartSessionResponse:
    session_id = request.session_id or str(uuid.uuid4())
    values = new_session_values(context, request, session_id)
    statement = _insert_session_statement(context.postgresql)
    if not context.rows(statement, values):
        return _replay_start(context, session_id, values["start_fingerprint"])
    context.touched.add(session_id)

    outbox.add_event(
        context, session_id, 1, "session_started", session_started(request, values)
    )
    return pb.StartSessionResponse(session=session_message(values))


def _replay_start(
    context: WriteContext, session_id: str, start_fingerprint: str
) -> pb.StartSessionResponse:
    row = select_session_row(context, session_id)
    if row is None or row["start_fingerprint"] != start_fingerprint:
        raise AlreadyExists(
            f"session {session_id!r} already exists with different content"
        )
    return pb.StartSessionResponse(session=session_message(row))


# Columns every lock returns.
_LOCK_COLUMNS = frozenset(
    {"event_sequence", "user_id", "query_type", "intent", "status", "start_time"}
)


@functools.cache
def _complete_lock_statement(postgresql: bool) -> Any:
    extra = tuple(c for c in S.c if c.name not in _LOCK_COLUMNS)
    return lock_statement(postgresql, extra)


@functools.cache
def _roll_up_statement() -> Any:
    """The roll-up the completion event carries, read after the lock: a
    subquery in the lock's RETURNING would read the snapshot taken before the
    lock was granted and miss an LLM call or step that committed meanwhile."""
    T = schema.transparency
    steps = schema.steps
    # Bound to the session id, not correlated, like the lock statement.
    tokens = sa.select(T.c.total_tokens).where(T.c.session_id == SESSION_ID)
    calls = sa.select(T.c.api_call_count).where(T.c.session_id == SESSION_ID)
    sql_recorded = (
        sa.select(steps.c.id)
        .where(
            steps.c.session_id == SESSION_ID,
            steps.c.step_type == SQL_EXECUTION,
            steps.c.finished_event_written.is_(True),
        )
        .exists()
    )
    return sa.select(
        tokens.scalar_subquery().label("total_tokens"),
        calls.scalar_subquery().label("call_count"),
        sql_recorded.label("sql_recorded"),
    )


@functools.cache
def _update_session_statement() -> Any:
    return S.update().where(S.c.session_id == SESSION_ID)


@dataclass(frozen=True)
class Completion:
    """What CompleteSession changes on a running session."""

    values: dict[str, Any]
    event: events_pb2.SessionCompleted


def completion(
    context: WriteContext,
    request: pb.CompleteSessionRequest,
    session: Any,
    completion_fingerprint: str,
    *,
    sequence: int,
    total_tokens: int,
    call_count: int,
    sql_recorded: bool,
) -> Completion:
    """The new column values and the event of completing ``session`` (its
    stored row) as the session's event ``sequence``; InvalidArgument for an
    end before the start.

    The values keep the event's sequence and serialized payload, which is
    what verify and backfill rebuild it from (outbox_relay/derive.py)."""
    if request.HasField("end_time"):
        end_time = to_datetime(request.end_time)
        if end_time < session["start_time"]:
            raise InvalidArgument(
                [FieldViolation("end_time", "must not be before the session's start")]
            )
    else:
        # The server's clock may lag a start time the client set.
        end_time = max(context.now, session["start_time"])
    total_duration = duration_ms(session["start_time"], end_time)
    confidence = (
        confidence_decimal(request.overall_confidence)
        if request.HasField("overall_confidence")
        else None
    )
    values = {
        "status": SESSION_STATUS_WORDS[request.status],
        "end_time": end_time,
        "total_duration_ms": total_duration,
        "overall_confidence": confidence,
        "generated_sql": request.generated_sql or None,
        "execution_result": request.execution_result or None,
        "error_message": request.error_message or None,
        "completion_fingerprint": completion_fingerprint,
        "updated_at": context.now,
    }
    event = events_pb2.SessionCompleted(
        user_id=session["user_id"],
        status=request.status,
        end_time=to_timestamp(end_time),
        total_duration_ms=total_duration or 0,
        generated_sql=request.generated_sql,
        execution_result=request.execution_result,
        error_message=request.error_message,
        query_type=session["query_type"],
        total_tokens=total_tokens,
        api_call_count=call_count,
        sql_execution_recorded=sql_recorded,
    )
    if confidence is not None:
        event.overall_confidence = float(confidence)
    values["completed_sequence"] = sequence
    values["completed_event"] = event.SerializeToString()
    return Completion(values, event)


def complete_session(
    context: WriteContext, request: pb.CompleteSessionRequest
) -> pb.CompleteSessionResponse:
    completion_fingerprint = content_fingerprint("CompleteSession", request)
    # Bumped now because nearly every completion is new; a replay undoes it.
    locked = lock_session(
        context,
        request.session_id,
        bump=1,
        statement=_complete_lock_statement(context.postgresql),
        then=(_roll_up_statement(), {"b_session_id": request.session_id}),
    )
    row = locked.row._asdict()
    if row["status"] != "running":
        if row["completion_fingerprint"] == completion_fingerprint:
            defer_bump_event_sequence(context, request.session_id, -1)
            return pb.CompleteSessionResponse(session=session_message(row))
        raise FailedPrecondition(
            f"session {request.session_id!r} is already {row['status']}"
        )

    (roll_up,) = locked.then_rows
    done = completion(
        context,
        request,
        row,
        completion_fingerprint,
        sequence=locked.event_sequence,
        total_tokens=roll_up.total_tokens or 0,
        call_count=roll_up.call_count or 0,
        sql_recorded=bool(roll_up.sql_recorded),
    )
    context.defer(
        _update_session_statement(),
        {**done.values, "b_session_id": request.session_id},
    )
    stored = {column.name: row[column.name] for column in S.c}
    stored.update(done.values)
    outbox.add_event(
        context,
        request.session_id,
        locked.event_sequence,
        "session_completed",
        done.event,
    )
    return pb.CompleteSessionResponse(session=session_message(stored))
