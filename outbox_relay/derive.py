"""Re-deriving outbox events from the ProcessFlow tables, and the legacy rows
they lead to.

``verify`` and ``backfill`` must agree with the relay about every legacy
value, so neither states a rule: both rebuild the events the server wrote
for a session (session started, the first terminal state of each step, each
LLM call, session completed) and hand them to ``outbox_relay.rules``. The
effects are folded in event order into the rows the legacy tables should
hold now.

The events applied once must be rebuilt as they were written, not from the
current state: an LLM call recorded after the completion changes the
roll-up the completion carried, and a step updated after its first terminal
state changes the step, not its legacy row. So the server keeps each such
event's payload and sequence with its row (process_flow_sessions.completed_*,
process_flow_steps.finished_*, process_flow_llm_calls.sequence) and those are
used here as stored, in sequence order. Rows written before migration 0002
have none: their events are derived from the current state (a step from its
current terminal state) and ordered as the relay most likely saw them --
session started, then steps and calls by time, then the completion -- ahead
of every event with a stored sequence, since they were all written earlier.

Sessions are read a page at a time, by session_id, with everything the
events need in three more statements keyed by the page's ids, so memory is
bounded by the page size whatever the number of sessions.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from outbox_relay import rules
from outbox_relay.rules import Effect, RowInsert, RowUpdate, TokenUsageIncrement
from processflow.catalog import SQL_EXECUTION
from processflow.v1 import events_pb2
from server import schema
from server.store.convert import (
    SESSION_STATUS_VALUES,
    STEP_STATUS_VALUES,
    TERMINAL_STEP_WORDS,
    json_object_text,
    to_timestamp,
)

S = schema.sessions
ST = schema.steps
C = schema.llm_calls
T = schema.transparency

# Backfill event ids: uuid5 of (fact, sink, generation) in this namespace.
BACKFILL_NAMESPACE = uuid.UUID("a4f1c9e2-7d3b-4b8e-9f60-2c5e8d1b3a77")


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a pass covers: started at or after ``since``, before
    ``until``, or exactly one ``session_id``."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    session_id: str | None = None

    def apply(self, query: Any) -> Any:
        if self.session_id is not None:
            query = query.where(S.c.session_id == self.session_id)
        if self.since is not None:
            query = query.where(S.c.start_time >= self.since)
        if self.until is not None:
            query = query.where(S.c.start_time < self.until)
        return query


@dataclass
class SessionFacts:
    """One session as the new tables hold it, with what its events need."""

    session: Any
    steps: list[Any] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)
    transparency: Any = None


@dataclass
class ExpectedRows:
    """The legacy rows of one session, as the rules give them for its latest
    state. Keys: PromptConstructionSteps by Id, LLMUsageLogs by RequestId."""

    session_id: str
    tracking: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: list[TokenUsageIncrement] = field(default_factory=list)


def select_session_page(
    connection: sa.Connection, after: str | None, limit: int, scope: SessionFilter
) -> list[Any]:
    query = sa.select(S).order_by(S.c.session_id).limit(limit)
    if after is not None:
        query = query.where(S.c.session_id > after)
    return list(connection.execute(scope.apply(query)))


def select_finished_steps(
    connection: sa.Connection, session_ids: Sequence[str]
) -> list[Any]:
    """Steps that reached a terminal status, with their parent's step type."""
    parent = ST.alias("parent")
    query = (
        sa.select(ST, parent.c.step_type.label("parent_step_type"))
        .outerjoin(
            parent,
            sa.and_(
                parent.c.session_id == ST.c.session_id,
                parent.c.step_id == ST.c.parent_step_id,
            ),
        )
        .where(
            ST.c.session_id.in_(session_ids),
            sa.or_(
                ST.c.finished_event_written.is_(True),
                ST.c.status.in_(sorted(TERMINAL_STEP_WORDS)),
            ),
        )
        .order_by(ST.c.session_id, ST.c.id)
    )
    return list(connection.execute(query))


def select_calls(connection: sa.Connection, session_ids: Sequence[str]) -> list[Any]:
    query = (
        sa.select(C, S.c.intent.label("session_intent"))
        .join(S, S.c.session_id == C.c.session_id)
        .where(C.c.session_id.in_(session_ids))
        .order_by(C.c.session_id, C.c.id)
    )
    return list(connection.execute(query))


def select_transparency(
    connection: sa.Connection, session_ids: Sequence[str]
) -> dict[str, Any]:
    query = sa.select(T).where(T.c.session_id.in_(session_ids))
    return {row.session_id: row for row in connection.execute(query)}


def load_facts(
    connection: sa.Connection, sessions: Sequence[Any]
) -> list[SessionFacts]:
    """The page's sessions with their finished steps, calls and roll-ups."""
    facts = {row.session_id: SessionFacts(row) for row in sessions}
    ids = list(facts)
    if not ids:
        return []
    for step in select_finished_steps(connection, ids):
        facts[step.session_id].steps.append(step)
    for call in select_calls(connection, ids):
        facts[call.session_id].calls.append(call)
    for session_id, roll_up in select_transparency(connection, ids).items():
        facts[session_id].transparency = roll_up
    return list(facts.values())


# Events, as the server writes them (server/store/*.py).


def _event(
    session: Any, kind: str, payload: Any, at: dt.datetime
) -> events_pb2.OutboxEvent:
    event = events_pb2.OutboxEvent(
        session_id=session.session_id,
        occurred_at=to_timestamp(at),
        tenant_id=session.tenant_id or "",
    )
    getattr(event, kind).CopyFrom(payload)
    return event


def session_started_event(session: Any) -> events_pb2.OutboxEvent:
    payload = events_pb2.SessionStarted(
        user_id=session.user_id,
        query=session.query,
        query_type=session.query_type,
        intent=session.intent or "",
        domain=session.domain or "",
        template=session.template or "",
        tables_retrieved=list(session.tables_retrieved or ()),
        start_time=to_timestamp(session.start_time),
        conversation_id=session.conversation_id or "",
        message_id=session.message_id or "",
    )
    return _event(session, "session_started", payload, session.created_at)


def step_finished_event(session: Any, step: Any) -> events_pb2.OutboxEvent:
    """The step's step_finished event: as stored with its first terminal
    state, or (written before migration 0002) from its current state."""
    if step.finished_event is not None:
        stored = events_pb2.StepFinished.FromString(step.finished_event)
        return _event(session, "step_finished", stored, step.updated_at)
    payload = events_pb2.StepFinished(
        user_id=session.user_id,
        step_id=step.step_id,
        step_type=step.step_type,
        parent_step_id=step.parent_step_id or "",
        parent_step_type=step.parent_step_type or "",
        name=step.name,
        step_order=step.step_order,
        status=STEP_STATUS_VALUES[step.status],
        output_data=step.output_data or "",
        metadata_json=json_object_text(step.metadata),
        error_message=step.error_message or "",
        tokens_used=step.tokens_used,
    )
    if step.start_time is not None:
        payload.start_time.CopyFrom(to_timestamp(step.start_time))
    if step.end_time is not None:
        payload.end_time.CopyFrom(to_timestamp(step.end_time))
    if step.confidence is not None:
        payload.confidence = float(step.confidence)
    return _event(session, "step_finished", payload, step.updated_at)


def llm_call_event(session: Any, call: Any) -> events_pb2.OutboxEvent:
    cost = Decimal(call.cost).quantize(Decimal("0.00000001"))
    payload = events_pb2.LlmCallRecorded(
        user_id=call.user_id,
        step_id=call.step_id or "",
        call_id=call.call_id,
        provider=call.provider or "",
        model=call.model or "",
        request_type=call.request_type or "",
        prompt_text=call.prompt_text or "",
        response_text=call.response_text or "",
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        total_tokens=call.total_tokens,
        cost_usd=format(cost, "f"),
        duration_ms=call.duration_ms,
        success=call.success,
        error_message=call.error_message or "",
        call_time=to_timestamp(call.call_time),
        session_query_type=call.query_type,
        session_intent=call.session_intent or "",
    )
    if call.temperature is not None:
        payload.temperature = call.temperature
    if call.max_tokens is not None:
        payload.max_tokens = call.max_tokens
    return _event(session, "llm_call_recorded", payload, call.created_at)


def session_completed_event(facts: SessionFacts) -> events_pb2.OutboxEvent:
    """The session_completed event: as stored with the completion, or
    (completed before migration 0002) from the current state and roll-up."""
    session = facts.session
    if session.completed_event is not None:
        stored = events_pb2.SessionCompleted.FromString(session.completed_event)
        return _event(session, "session_completed", stored, session.updated_at)
    roll_up = facts.transparency
    payload = events_pb2.SessionCompleted(
        user_id=session.user_id,
        status=SESSION_STATUS_VALUES[session.status],
        total_duration_ms=session.total_duration_ms or 0,
        generated_sql=session.generated_sql or "",
        execution_result=session.execution_result or "",
        error_message=session.error_message or "",
        query_type=session.query_type,
        total_tokens=roll_up.total_tokens if roll_up is not None else 0,
        api_call_count=roll_up.api_call_count if roll_up is not None else 0,
        sql_execution_recorded=any(
            step.step_type == SQL_EXECUTION for step in facts.steps
        ),
    )
    if session.end_time is not None:
        payload.end_time.CopyFrom(to_timestamp(session.end_time))
    if session.overall_confidence is not None:
        payload.overall_confidence = float(session.overall_confidence)
    return _event(session, "session_completed", payload, session.updated_at)


def session_events(facts: SessionFacts) -> list[events_pb2.OutboxEvent]:
    """The session's events in the order the relay applied them: started,
    then those without a stored sequence (steps and calls by time, then
    completed), then those with one, by sequence."""
    session = facts.session
    derived: list[tuple[dt.datetime, int, int, events_pb2.OutboxEvent]] = []
    stored: list[tuple[int, events_pb2.OutboxEvent]] = []
    for step in facts.steps:
        event = step_finished_event(session, step)
        if step.finished_sequence is not None:
            stored.append((step.finished_sequence, event))
        else:
            derived.append((step.end_time or step.updated_at, 0, step.id, event))
    for call in facts.calls:
        event = llm_call_event(session, call)
        if call.sequence is not None:
            stored.append((call.sequence, event))
        else:
            derived.append((call.call_time, 1, call.id, event))
    derived.sort(key=lambda item: item[:3])
    events = [session_started_event(session), *(item[3] for item in derived)]
    if session.status != "running":
        completed = session_completed_event(facts)
        if session.completed_sequence is not None:
            stored.append((session.completed_sequence, completed))
        else:
            events.append(completed)
    stored.sort(key=lambda item: item[0])
    events.extend(event for _, event in stored)
    for sequence, event in enumerate(events, start=1):
        event.sequence = sequence
    return events


def fact_key(event: events_pb2.OutboxEvent) -> str:
    """What an event is about, stable across re-derivations."""
    kind = event.WhichOneof("payload")
    if kind == "step_finished":
        return f"{kind}:{event.session_id}:{event.step_finished.step_id}"
    if kind == "llm_call_recorded":
        return f"{kind}:{event.llm_call_recorded.call_id}"
    return f"{kind}:{event.session_id}"


def backfill_event_id(fact: str, sink: str, generation: int) -> str:
    return str(uuid.uuid5(BACKFILL_NAMESPACE, f"{fact}\x1f{sink}\x1f{generation}"))


def event_effects(
    event: events_pb2.OutboxEvent,
) -> list[Effect]:
    at = event.occurred_at.ToDatetime()
    return rules.effects_of(event, at)


def expected_rows(facts: SessionFacts) -> ExpectedRows:
    """Folds the effects of the session's events into the rows they leave."""
    expected = ExpectedRows(facts.session.session_id)
    for event in session_events(facts):
        for effect in event_effects(event):
            _fold(expected, effect)
    return expected


def _fold(expected: ExpectedRows, effect: Effect) -> None:
    if isinstance(effect, TokenUsageIncrement):
        expected.usage.append(effect)
    elif isinstance(effect, RowInsert):
        values = dict(effect.values)
        if effect.table == rules.PST:
            expected.tracking = values
        elif effect.table == rules.TRACES:
            expected.trace = values
        elif effect.table == rules.STEPS:
            expected.steps[values["Id"]] = values
        elif effect.table == rules.LLM_USAGE:
            expected.calls[values["RequestId"]] = values
    elif isinstance(effect, RowUpdate):
        target = expected.tracking if effect.table == rules.PST else expected.trace
        if target is not None:
            target.update(effect.values)
