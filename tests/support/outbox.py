"""Writes outbox events the way the server does (COMMON.md contract), so the
relay can be tested without the gRPC server.

``SessionEvents`` builds a session's events with consecutive sequences;
``write_events`` stores them as pending rows (event_type = the payload case,
payload = the serialized OutboxEvent, next_attempt_at = created_at) and, on
PostgreSQL, notifies 'processflow_outbox' in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from processflow.db import utcnow
from processflow.v1 import events_pb2, resources_pb2
from server.schema import outbox

BASE_TIME = dt.datetime(2026, 3, 14, 9, 26, 53, 589000)


def timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class SessionEvents:
    """Builds the outbox events of one session, numbering them from 1."""

    def __init__(
        self,
        session_id: str,
        *,
        user_id: str = "user-1",
        query_type: str = "enhanced",
        intent: str = "",
        at: dt.datetime = BASE_TIME,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.query_type = query_type
        self.intent = intent
        self.at = at
        self.sequence = 0

    def _event(self, **payload: Any) -> events_pb2.OutboxEvent:
        self.sequence += 1
        self.at += dt.timedelta(milliseconds=10)
        return events_pb2.OutboxEvent(
            event_id=str(uuid.uuid4()),
            session_id=self.session_id,
            sequence=self.sequence,
            occurred_at=timestamp(self.at),
            **payload,
        )

    def started(self, **fields: Any) -> events_pb2.OutboxEvent:
        values: dict[str, Any] = {
            "user_id": self.user_id,
            "query": "How many orders shipped last week?",
            "query_type": self.query_type,
            "intent": self.intent,
            "start_time": timestamp(self.at),
        }
        values.update(fields)
        return self._event(session_started=events_pb2.SessionStarted(**values))

    def step(
        self, step_id: str, step_type: str, **fields: Any
    ) -> events_pb2.OutboxEvent:
        values: dict[str, Any] = {
            "user_id": self.user_id,
            "step_id": step_id,
            "step_type": step_type,
            "name": step_type,
            "step_order": 6,
            "status": resources_pb2.STEP_STATUS_COMPLETED,
            "start_time": timestamp(self.at),
            "end_time": timestamp(self.at + dt.timedelta(milliseconds=5)),
        }
        values.update(fields)
        return self._event(step_finished=events_pb2.StepFinished(**values))

    def llm_call(self, call_id: str, **fields: Any) -> events_pb2.OutboxEvent:
        values: dict[str, Any] = {
            "user_id": self.user_id,
            "call_id": call_id,
            "provider": "openai",
            "model": "gpt-4o",
            "request_type": "sql_generation",
            "prompt_text": "prompt",
            "response_text": "SELECT 1",
            "input_tokens": 100,
            "output_tokens": 20,
            "total_tokens": 120,
            "cost_usd": "0.00123400",
            "duration_ms": 850,
            "success": True,
            "call_time": timestamp(self.at),
            "session_query_type": self.query_type,
            "session_intent": self.intent,
        }
        values.update(fields)
        return self._event(llm_call_recorded=events_pb2.LlmCallRecorded(**values))

    def completed(self, **fields: Any) -> events_pb2.OutboxEvent:
        values: dict[str, Any] = {
            "user_id": self.user_id,
            "status": resources_pb2.SESSION_STATUS_COMPLETED,
            "end_time": timestamp(self.at),
            "total_duration_ms": 1500,
            "generated_sql": "SELECT 1",
            "query_type": self.query_type,
            "total_tokens": 120,
            "api_call_count": 1,
        }
        values.update(fields)
        return self._event(session_completed=events_pb2.SessionCompleted(**values))


def typical_session(
    session_id: str, *, user_id: str = "user-1"
) -> list[events_pb2.OutboxEvent]:
    """Eight events touching all five legacy tables."""
    session = SessionEvents(session_id, user_id=user_id, intent="aggregation")
    return [
        session.started(tables_retrieved=["orders", "customers"]),
        session.step("s-auth", "auth"),
        session.step("s-ctx", "context-gathering", parent_step_type="prompt-building"),
        session.step("s-prompt", "prompt-building", output_data="PROMPT " + session_id),
        session.llm_call(f"{session_id}-call-1"),
        session.llm_call(
            f"{session_id}-call-2", total_tokens=80, cost_usd="0.00050000"
        ),
        session.step("s-exec", "sql-execution"),
        session.completed(
            sql_execution_recorded=True, total_tokens=200, api_call_count=2
        ),
    ]


def outbox_row(event: events_pb2.OutboxEvent, now: dt.datetime) -> dict[str, Any]:
    kind = event.WhichOneof("payload")
    assert kind is not None
    return {
        "event_id": event.event_id,
        "session_id": event.session_id,
        "sequence": event.sequence,
        "event_type": kind,
        "payload": event.SerializeToString(),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def write_events(
    target: sa.Engine | sa.Connection,
    events: Iterable[events_pb2.OutboxEvent],
    *,
    notify: bool = True,
) -> int:
    """Stores ``events`` as pending outbox rows in one transaction."""
    now = utcnow()
    rows = [outbox_row(event, now) for event in events]
    if not rows:
        return 0
    if isinstance(target, sa.Engine):
        with target.begin() as connection:
            _insert(connection, rows, notify)
    else:
        _insert(target, rows, notify)
    return len(rows)


def _insert(
    connection: sa.Connection, rows: Sequence[dict[str, Any]], notify: bool
) -> None:
    connection.execute(sa.insert(outbox), list(rows))
    if notify and connection.dialect.name == "postgresql":
        for session_id in sorted({row["session_id"] for row in rows}):
            connection.execute(
                sa.text("SELECT pg_notify('processflow_outbox', :s)"), {"s": session_id}
            )


def write_raw_event(
    engine: sa.Engine,
    *,
    session_id: str,
    sequence: int,
    event_type: str,
    payload: bytes,
) -> None:
    """Stores a row whose payload is whatever the test says (corrupt payloads)."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            sa.insert(outbox).values(
                event_id=str(uuid.uuid4()),
                session_id=session_id,
                sequence=sequence,
                event_type=event_type,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )


def status_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
        )
        return {str(status): int(count) for status, count in rows}
