"""The operations of an Ingest, applied to the batch's state in memory.

Each function follows its single call step by step (sessions.start_session,
steps.record_step, logs.append_logs, llm_calls.record_llm_call,
sessions.complete_session): the same checks in the same order, the same
errors, the same rows and events, using the same helpers. Only where the
single call reads or writes the database, these read and change the
BatchState, and ingest_writes turns the final state into rows.

Each returns the operation's IngestResult and, when ``answer`` is set (the
operation has its own request_id), the single call's response.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from processflow.catalog import CATALOG, SQL_EXECUTION
from processflow.v1 import processflow_service_pb2 as pb
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from server.store import outbox
from server.store.convert import (
    TERMINAL_STEP_WORDS,
    cost_decimal,
    llm_call_message,
    session_message,
    step_message,
    transparency_message,
)
from server.store.ingest_state import BatchState, SessionState, StepState
from server.store.llm_calls import (
    MAX_SESSION_COST,
    call_values,
    llm_call_recorded,
    transparency_values,
)
from server.store.logs import log_rows
from server.store.sessions import completion, new_session_values, session_started
from server.store.steps import (
    FINISHED_EVENT_COLUMNS,
    created_values,
    keep_finished_event,
    merge_request,
    step_finished,
)
from server.store.transaction import WriteContext, content_fingerprint

# process_flow_transparency.estimated_cost keeps 6 places; PostgreSQL rounds
# half away from zero when it stores a value.
ROLL_UP_COST_STEP = Decimal("0.000001")


@dataclass
class Applied:
    result: pb.IngestResult
    response: Any = None
    # Rows of process_flow_logs this operation appends (AppendLogs answers
    # with their ids, known after the insert).
    log_rows: list[dict[str, Any]] | None = None


@dataclass
class Writes:
    """Rows that only get inserted, in operation order."""

    logs: list[dict[str, Any]]
    calls: list[dict[str, Any]]


def _next_sequence(session: SessionState) -> int:
    """The sequence _event gives the session's next event (rows that keep
    their event's sequence are built before the event)."""
    return session.sequence + 1


def _event(
    context: WriteContext, session: SessionState, kind: str, payload: Any
) -> None:
    session.sequence += 1
    outbox.add_event(context, session.session_id, session.sequence, kind, payload)


def start_session(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.StartSessionRequest,
    answer: bool,
) -> Applied:
    session_id = request.session_id or str(uuid.uuid4())
    values = new_session_values(context, request, session_id)
    existing = state.sessions.get(session_id)
    if session_id in state.foreign or (
        existing is not None
        and existing.row["start_fingerprint"] != values["start_fingerprint"]
    ):
        raise AlreadyExists(
            f"session {session_id!r} already exists with different content"
        )
    result = pb.IngestResult(session_id=session_id)
    if existing is not None:
        if not answer:
            return Applied(result)
        return Applied(
            result, pb.StartSessionResponse(session=session_message(existing.row))
        )

    values["event_sequence"] = 0
    session = SessionState(session_id, values, stored=False, sequence=0)
    state.sessions[session_id] = session
    context.touched.add(session_id)
    _event(context, session, "session_started", session_started(request, values))
    if not answer:
        return Applied(result)
    return Applied(result, pb.StartSessionResponse(session=session_message(values)))


def record_step(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.RecordStepRequest,
    answer: bool,
) -> Applied:
    session = state.session(request.session_id)
    context.touched.add(session.session_id)
    entry = CATALOG.get(request.step_type) if request.step_type else None
    parent_code = entry.parent if entry and not request.parent_step_id else None
    existing = session.steps.get(request.step_id)
    if request.parent_step_id and request.parent_step_id not in session.steps:
        raise InvalidArgument(
            [
                FieldViolation(
                    "parent_step_id",
                    f"no step {request.parent_step_id!r} in session "
                    f"{request.session_id!r}",
                )
            ]
        )

    if existing is None:
        if not request.step_type:
            raise InvalidArgument(
                [FieldViolation("step_type", "required when the step is created")]
            )
        if len(session.steps) >= context.limits.max_steps_per_session:
            raise ResourceExhausted(
                f"session {request.session_id!r} has reached its limit of "
                f"{context.limits.max_steps_per_session} steps"
            )
        candidates = session.step_ids_by_type(parent_code) if parent_code else []
        parent_id = request.parent_step_id or next(iter(candidates), None)
        values = merge_request(
            context, request, created_values(context, request, parent_id)
        )
    else:
        assert existing.row is not None  # loaded: the batch names this step
        values = merge_request(context, request, dict(existing.row))
    finishing = (
        values["status"] in TERMINAL_STEP_WORDS and not values["finished_event_written"]
    )
    values["finished_event_written"] = values["finished_event_written"] or finishing
    # A stored step's finished_* columns are not loaded: None keeps them (see
    # update_step_statement).
    for name in FINISHED_EVENT_COLUMNS:
        values.setdefault(name, None)
    if existing is None:
        existing = StepState(
            request.step_id,
            values["step_type"],
            values["finished_event_written"],
            (1, next(state.new_steps)),
        )
        session.steps[request.step_id] = existing
    existing.row = values
    existing.step_type = values["step_type"]
    existing.finished = values["finished_event_written"]
    existing.changed = True
    if finishing:
        parent = session.steps.get(values["parent_step_id"] or "")
        finished = step_finished(
            request.step_id,
            values,
            session.row["user_id"],
            parent.step_type if parent is not None else "",
        )
        keep_finished_event(values, _next_sequence(session), finished)
        _event(context, session, "step_finished", finished)

    rows = _log_rows(context, session, request.logs, request.step_id)
    writes.logs.extend(rows)
    result = pb.IngestResult(
        session_id=request.session_id,
        step_id=request.step_id,
        logs_appended=len(request.logs),
    )
    if not answer:
        return Applied(result)
    return Applied(result, pb.RecordStepResponse(step=step_message(values)))


def _log_rows(
    context: WriteContext,
    session: SessionState,
    logs: Any,
    default_step_id: str | None,
) -> list[dict[str, Any]]:
    # Every step of the session is in memory, so no step is looked up.
    referenced = frozenset(log.step_id for log in logs if log.step_id)
    return log_rows(
        context,
        session.session_id,
        logs,
        default_step_id=default_step_id,
        known_step_ids=frozenset(session.steps),
        checked_step_ids=referenced,
    )


def append_logs(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.AppendLogsRequest,
    answer: bool,
) -> Applied:
    session = state.session(request.session_id)
    context.touched.add(session.session_id)
    rows = _log_rows(context, session, request.logs, None)
    writes.logs.extend(rows)
    result = pb.IngestResult(session_id=request.session_id, logs_appended=len(rows))
    return Applied(result, log_rows=rows if answer else None)


def record_llm_call(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.RecordLlmCallRequest,
    answer: bool,
) -> Applied:
    session = state.session(request.session_id)
    context.touched.add(session.session_id)
    if request.step_id and request.step_id not in session.steps:
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
    context_row = _SessionContext(session.row)
    values = call_values(
        context,
        request,
        call_id,
        cost,
        context_row,
        call_fingerprint,
        sequence=_next_sequence(session),
    )
    result = pb.IngestResult(session_id=request.session_id, call_id=call_id)
    stored = state.calls.get(call_id)
    if stored is not None:
        if (
            stored["fingerprint"] != call_fingerprint
            or stored["session_id"] != request.session_id
            or stored["tenant_id"] != context.tenant_id
        ):
            raise AlreadyExists(
                f"LLM call {call_id!r} already exists with different content"
            )
        if not answer:
            return Applied(result)
        assert session.transparency is not None  # the call added to it
        return Applied(
            result,
            pb.RecordLlmCallResponse(
                call=llm_call_message(stored),
                transparency=transparency_message(session.transparency),
            ),
        )
    current = session.transparency
    current_cost = Decimal(current["estimated_cost"]) if current else Decimal(0)
    if current_cost + cost > MAX_SESSION_COST:
        raise InvalidArgument(
            [
                FieldViolation(
                    "cost_usd",
                    f"the session's total cost would exceed {MAX_SESSION_COST} USD",
                )
            ]
        )

    state.calls[call_id] = values
    writes.calls.append(values)
    _add_to_roll_up(context, session, transparency_values(context, request, cost))
    _event(
        context,
        session,
        "llm_call_recorded",
        llm_call_recorded(request, values, cost, context_row),
    )
    if not answer:
        return Applied(result)
    assert session.transparency is not None
    return Applied(
        result,
        pb.RecordLlmCallResponse(
            call=llm_call_message(values),
            transparency=transparency_message(session.transparency),
        ),
    )


class _SessionContext:
    """The session columns a call row and its event copy, by attribute."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.user_id = row["user_id"]
        self.query_type = row["query_type"]
        self.intent = row["intent"]


def _add_to_roll_up(
    context: WriteContext, session: SessionState, call: dict[str, Any]
) -> None:
    """What llm_calls.upsert_transparency's upsert does to the roll-up."""
    if context.postgresql:
        call["estimated_cost"] = Decimal(call["estimated_cost"]).quantize(
            ROLL_UP_COST_STEP, rounding=ROUND_HALF_UP
        )
    current = session.transparency
    session.transparency_changed = True
    if current is None:
        session.transparency = call
        return
    for name in ("model", "temperature", "max_tokens", "confidence"):
        if call[name] is not None:
            current[name] = call[name]
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "estimated_cost",
        "ai_processing_time_ms",
        "api_call_count",
    ):
        current[name] = current[name] + call[name]
    current["updated_at"] = call["updated_at"]


def complete_session(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.CompleteSessionRequest,
    answer: bool,
) -> Applied:
    session = state.session(request.session_id)
    context.touched.add(session.session_id)
    completion_fingerprint = content_fingerprint("CompleteSession", request)
    row = session.row
    result = pb.IngestResult(session_id=request.session_id)
    if row["status"] != "running":
        if row["completion_fingerprint"] == completion_fingerprint:
            if not answer:
                return Applied(result)
            return Applied(
                result, pb.CompleteSessionResponse(session=session_message(row))
            )
        raise FailedPrecondition(
            f"session {request.session_id!r} is already {row['status']}"
        )

    roll_up = session.transparency or {}
    done = completion(
        context,
        request,
        row,
        completion_fingerprint,
        sequence=_next_sequence(session),
        total_tokens=roll_up.get("total_tokens") or 0,
        call_count=roll_up.get("api_call_count") or 0,
        sql_recorded=any(
            step.step_type == SQL_EXECUTION and step.finished
            for step in session.steps.values()
        ),
    )
    row.update(done.values)
    session.changed.update(done.values)
    _event(context, session, "session_completed", done.event)
    if not answer:
        return Applied(result)
    return Applied(result, pb.CompleteSessionResponse(session=session_message(row)))
