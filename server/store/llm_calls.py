"""RecordLlmCall: one call row, the session's transparency roll-up, one event.

A call_id seen before answers as the first call did when the content is the
same (llm_calls.fingerprint) and conflicts otherwise.
"""

from __future__ import annotations

import functools
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from server import schema
from server.errors import AlreadyExists, FieldViolation, InvalidArgument
from server.store import outbox
from server.store.convert import (
    confidence_decimal,
    cost_decimal,
    cost_text,
    llm_call_message,
    to_datetime,
    to_timestamp,
    transparency_message,
)
from server.store.sessions import (
    SESSION_ID,
    defer_bump_event_sequence,
    lock_session,
    lock_statement,
)
from server.store.transaction import WriteContext, content_fingerprint

S = schema.sessions
C = schema.llm_calls
T = schema.transparency
STEPS = schema.steps
# process_flow_transparency.estimated_cost is NUMERIC(10,6).
MAX_SESSION_COST = Decimal("9999.999999")


@functools.cache
def _lock_statement(postgresql: bool) -> Any:
    # Bound to the session id, not correlated: inside UPDATE ... RETURNING
    # the column names render unqualified and would match every row.
    current_cost = (
        sa.select(T.c.estimated_cost)
        .where(T.c.session_id == SESSION_ID)
        .scalar_subquery()
    )
    step_exists = (
        sa.select(STEPS.c.id)
        .where(
            STEPS.c.session_id == SESSION_ID,
            STEPS.c.step_id == sa.bindparam("b_step_id", type_=sa.String()),
        )
        .exists()
    )
    return lock_statement(
        postgresql,
        (current_cost.label("current_cost"), step_exists.label("step_exists")),
    )


@functools.cache
def _insert_call_statement(postgresql: bool) -> Any:
    insert = postgresql_insert(C) if postgresql else sqlite_insert(C)
    return insert.on_conflict_do_nothing(index_elements=[C.c.call_id]).returning(C.c.id)


def record_llm_call(
    context: WriteContext, request: pb.RecordLlmCallRequest
) -> pb.RecordLlmCallResponse:
    # Bumped now because nearly every call is new; the rare replay undoes it.
    locked = lock_session(
        context,
        request.session_id,
        bump=1,
        statement=_lock_statement(context.postgresql),
        parameters={"b_step_id": request.step_id},
    )
    row = locked.row
    if request.step_id and not row.step_exists:
        raise InvalidArgument(
            [
                FieldViolation(
                    "step_id",
                    f"no step {request.step_id!r} in session {request.session_id!r}",
                )
            ]
        )

    call_id = request.call_id or str(uuid.uuid4())
    call_fingerprint = content_fingerprint("RecordLlmCall", request)
    cost = cost_decimal(request.cost_usd)
    values = call_values(
        context,
        request,
        call_id,
        cost,
        row,
        call_fingerprint,
        sequence=locked.event_sequence,
    )
    statement = _insert_call_statement(context.postgresql)
    if not context.rows(statement, values):
        defer_bump_event_sequence(context, request.session_id, -1)
        return _replay_call(context, request, call_id, call_fingerprint)
    if Decimal(row.current_cost or 0) + cost > MAX_SESSION_COST:
        raise InvalidArgument(
            [
                FieldViolation(
                    "cost_usd",
                    f"the session's total cost would exceed {MAX_SESSION_COST} USD",
                )
            ]
        )

    roll_up = upsert_transparency(context, request, cost)
    recorded = llm_call_recorded(request, values, cost, row)
    outbox.add_event(
        context,
        request.session_id,
        locked.event_sequence,
        "llm_call_recorded",
        recorded,
    )
    return pb.RecordLlmCallResponse(
        call=llm_call_message(values), transparency=transparency_message(roll_up)
    )


def llm_call_recorded(
    request: pb.RecordLlmCallRequest,
    values: dict[str, Any],
    cost: Decimal,
    session: Any,
) -> events_pb2.LlmCallRecorded:
    """The llm_call_recorded event's payload for the call row ``values``."""
    recorded = events_pb2.LlmCallRecorded(
        user_id=session.user_id,
        step_id=request.step_id,
        call_id=values["call_id"],
        provider=request.provider,
        model=request.model,
        request_type=request.request_type,
        prompt_text=request.prompt_text,
        response_text=request.response_text,
        input_tokens=request.input_tokens,
        output_tokens=request.output_tokens,
        total_tokens=values["total_tokens"],
        cost_usd=cost_text(cost),
        duration_ms=request.duration_ms,
        success=values["success"],
        error_message=request.error_message,
        call_time=to_timestamp(values["call_time"]),
        session_query_type=session.query_type,
        session_intent=session.intent or "",
    )
    if request.HasField("temperature"):
        recorded.temperature = request.temperature
    if request.HasField("max_tokens"):
        recorded.max_tokens = request.max_tokens
    return recorded


def call_values(
    context: WriteContext,
    request: pb.RecordLlmCallRequest,
    call_id: str,
    cost: Decimal,
    session: Any,
    call_fingerprint: str,
    *,
    sequence: int,
) -> dict[str, Any]:
    """The call's row; ``sequence`` is its llm_call_recorded event's, which
    verify and backfill order the session's events by."""
    return {
        "call_id": call_id,
        "session_id": request.session_id,
        "tenant_id": context.tenant_id,
        "user_id": session.user_id,
        "query_type": session.query_type,
        "step_id": request.step_id or None,
        "provider": request.provider or None,
        "model": request.model or None,
        "request_type": request.request_type or None,
        "prompt_text": request.prompt_text or None,
        "response_text": request.response_text or None,
        "input_tokens": request.input_tokens,
        "output_tokens": request.output_tokens,
        "total_tokens": request.input_tokens + request.output_tokens,
        "cost": cost,
        "duration_ms": request.duration_ms,
        "success": request.success if request.HasField("success") else True,
        "error_message": request.error_message or None,
        "call_time": to_datetime(request.call_time)
        if request.HasField("call_time")
        else context.now,
        "temperature": request.temperature if request.HasField("temperature") else None,
        "max_tokens": request.max_tokens if request.HasField("max_tokens") else None,
        "confidence": confidence_decimal(request.confidence)
        if request.HasField("confidence")
        else None,
        "fingerprint": call_fingerprint,
        "sequence": sequence,
        "created_at": context.now,
        "updated_at": context.now,
    }


@functools.cache
def _upsert_transparency_statement(postgresql: bool) -> Any:
    statement = postgresql_insert(T) if postgresql else sqlite_insert(T)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[T.c.session_id],
        set_={
            # The latest call wins; a call that leaves a value out keeps the
            # previous call's value.
            "model": sa.func.coalesce(new.model, T.c.model),
            "temperature": sa.func.coalesce(new.temperature, T.c.temperature),
            "max_tokens": sa.func.coalesce(new.max_tokens, T.c.max_tokens),
            "confidence": sa.func.coalesce(new.confidence, T.c.confidence),
            "prompt_tokens": T.c.prompt_tokens + new.prompt_tokens,
            "completion_tokens": T.c.completion_tokens + new.completion_tokens,
            "total_tokens": T.c.total_tokens + new.total_tokens,
            "estimated_cost": T.c.estimated_cost + new.estimated_cost,
            "ai_processing_time_ms": T.c.ai_processing_time_ms
            + new.ai_processing_time_ms,
            "api_call_count": T.c.api_call_count + new.api_call_count,
            "updated_at": new.updated_at,
        },
    ).returning(*T.c)


def transparency_values(
    context: WriteContext, request: pb.RecordLlmCallRequest, cost: Decimal
) -> dict[str, Any]:
    """The roll-up of this one call (a session's first call writes it as is)."""
    return {
        "session_id": request.session_id,
        "model": request.model or None,
        "temperature": request.temperature if request.HasField("temperature") else None,
        "max_tokens": request.max_tokens if request.HasField("max_tokens") else None,
        "prompt_tokens": request.input_tokens,
        "completion_tokens": request.output_tokens,
        "total_tokens": request.input_tokens + request.output_tokens,
        "estimated_cost": cost,
        "confidence": confidence_decimal(request.confidence)
        if request.HasField("confidence")
        else None,
        "ai_processing_time_ms": request.duration_ms,
        "api_call_count": 1,
        "created_at": context.now,
        "updated_at": context.now,
    }


def upsert_transparency(
    context: WriteContext, request: pb.RecordLlmCallRequest, cost: Decimal
) -> Any:
    """Adds the call to the session's roll-up; returns the row after it."""
    statement = _upsert_transparency_statement(context.postgresql)
    values = transparency_values(context, request, cost)
    (roll_up,) = context.rows(statement, values)
    return roll_up._asdict()


def _replay_call(
    context: WriteContext,
    request: pb.RecordLlmCallRequest,
    call_id: str,
    call_fingerprint: str,
) -> pb.RecordLlmCallResponse:
    stored = (
        context.connection.execute(sa.select(C).where(C.c.call_id == call_id))
        .mappings()
        .one_or_none()
    )
    if (
        stored is None
        or stored["fingerprint"] != call_fingerprint
        or stored["session_id"] != request.session_id
        or stored["tenant_id"] != context.tenant_id
    ):
        raise AlreadyExists(
            f"LLM call {call_id!r} already exists with different content"
        )
    roll_up = (
        context.connection.execute(
            sa.select(T).where(T.c.session_id == request.session_id)
        )
        .mappings()
        .one()
    )
    return pb.RecordLlmCallResponse(
        call=llm_call_message(stored), transparency=transparency_message(roll_up)
    )
