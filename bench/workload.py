"""The workload every measurement shares: one pipeline run per session.

A session is StartSession, four RecordStep calls (auth, prompt-building, its
child context-gathering, sql-execution; each recorded once, already
finished), one RecordLlmCall and CompleteSession. Every call is one write and
every write one outbox event, so calls, operations and events count alike.
The same runs are also expressed as outbox events (for the relay backlog)
without going through the server.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2

from processflow.v1 import events_pb2, resources_pb2
from processflow.v1 import processflow_service_pb2 as api
from server.store.outbox import new_event_id

CALLS_PER_SESSION = 7
USERS = 50
_PROMPT = (
    "You are a SQL assistant. Tables: orders(id, customer_id, total, day); "
    "customers(id, name, region). "
) * 12
_RESPONSE = "SELECT c.region, SUM(o.total) FROM orders o JOIN customers c " * 6
_SQL = "SELECT c.region, SUM(o.total) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.region"  # noqa: E501

# (step code, name, order, parent code)
_STEPS = (
    ("auth", "Authentication & Authorization", 1, ""),
    ("prompt-building", "Prompt Construction", 6, ""),
    ("context-gathering", "Context Gathering", 6, "prompt-building"),
    ("sql-execution", "SQL Execution", 8, ""),
)


@dataclass(frozen=True)
class Call:
    """One unary call: the service method name, its request and how many
    outbox events it writes."""

    method: str
    request: pb_message.Message
    events: int = 1


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass(frozen=True)
class SessionRun:
    """One pipeline run; ``prefix`` keeps ids unique across runs and databases."""

    prefix: str
    number: int
    start: dt.datetime

    @property
    def session_id(self) -> str:
        return f"{self.prefix}-s{self.number}"

    @property
    def user_id(self) -> str:
        return f"user-{self.number % USERS}"

    def _step_id(self, code: str) -> str:
        return f"{self.session_id}-{code}"

    def _moment(self, offset_ms: int) -> dt.datetime:
        return self.start + dt.timedelta(milliseconds=offset_ms)

    def calls(self) -> list[Call]:
        sid = self.session_id
        calls = [
            Call(
                "StartSession",
                api.StartSessionRequest(
                    request_id=f"{sid}-r0",
                    session_id=sid,
                    user_id=self.user_id,
                    query=f"What was the revenue by region last month? ({self.number})",
                    query_type="enhanced",
                    intent="aggregation",
                    domain="sales",
                    template="sql-default",
                    tables_retrieved=["orders", "customers"],
                    start_time=_timestamp(self._moment(0)),
                ),
            )
        ]
        for index, (code, _name, _order, parent) in enumerate(_STEPS, start=1):
            calls.append(
                Call(
                    "RecordStep",
                    api.RecordStepRequest(
                        request_id=f"{sid}-r{index}",
                        session_id=sid,
                        step_id=self._step_id(code),
                        step_type=code,
                        parent_step_id=self._step_id(parent) if parent else "",
                        status=resources_pb2.STEP_STATUS_COMPLETED,
                        start_time=_timestamp(self._moment(index * 10)),
                        end_time=_timestamp(self._moment(index * 10 + 8)),
                        confidence=0.9,
                        output_data=_PROMPT if code == "prompt-building" else "ok",
                        tokens_used=120 if code == "prompt-building" else 0,
                    ),
                )
            )
        calls.append(
            Call(
                "RecordLlmCall",
                api.RecordLlmCallRequest(
                    request_id=f"{sid}-r5",
                    session_id=sid,
                    step_id=self._step_id("prompt-building"),
                    call_id=f"{sid}-c1",
                    provider="openai",
                    model="gpt-4o-mini",
                    request_type="sql_generation",
                    prompt_text=_PROMPT,
                    response_text=_RESPONSE,
                    input_tokens=620,
                    output_tokens=85,
                    cost_usd=0.00042,
                    duration_ms=840,
                    temperature=0.1,
                    max_tokens=512,
                    call_time=_timestamp(self._moment(60)),
                ),
            )
        )
        calls.append(
            Call(
                "CompleteSession",
                api.CompleteSessionRequest(
                    request_id=f"{sid}-r6",
                    session_id=sid,
                    status=resources_pb2.SESSION_STATUS_COMPLETED,
                    generated_sql=_SQL,
                    execution_result="3 rows",
                    overall_confidence=0.88,
                    end_time=_timestamp(self._moment(900)),
                ),
            )
        )
        return calls

    def events(self, created_at: dt.datetime) -> list[events_pb2.OutboxEvent]:
        """The outbox events the server writes for this run, built directly."""
        sid = self.session_id
        events: list[events_pb2.OutboxEvent] = []

        def event(**payload: pb_message.Message) -> events_pb2.OutboxEvent:
            item = events_pb2.OutboxEvent(
                event_id=new_event_id(),
                session_id=sid,
                sequence=len(events) + 1,
                occurred_at=_timestamp(created_at),
                **payload,  # type: ignore[arg-type]
            )
            events.append(item)
            return item

        event(
            session_started=events_pb2.SessionStarted(
                user_id=self.user_id,
                query=f"What was the revenue by region last month? ({self.number})",
                query_type="enhanced",
                intent="aggregation",
                domain="sales",
                template="sql-default",
                tables_retrieved=["orders", "customers"],
                start_time=_timestamp(self._moment(0)),
            )
        )
        for index, (code, name, order, parent) in enumerate(_STEPS, start=1):
            event(
                step_finished=events_pb2.StepFinished(
                    user_id=self.user_id,
                    step_id=self._step_id(code),
                    step_type=code,
                    parent_step_id=self._step_id(parent) if parent else "",
                    parent_step_type=parent,
                    name=name,
                    step_order=order,
                    status=resources_pb2.STEP_STATUS_COMPLETED,
                    start_time=_timestamp(self._moment(index * 10)),
                    end_time=_timestamp(self._moment(index * 10 + 8)),
                    confidence=0.9,
                    output_data=_PROMPT if code == "prompt-building" else "ok",
                    tokens_used=120 if code == "prompt-building" else 0,
                )
            )
        event(
            llm_call_recorded=events_pb2.LlmCallRecorded(
                user_id=self.user_id,
                step_id=self._step_id("prompt-building"),
                call_id=f"{sid}-c1",
                provider="openai",
                model="gpt-4o-mini",
                request_type="sql_generation",
                prompt_text=_PROMPT,
                response_text=_RESPONSE,
                input_tokens=620,
                output_tokens=85,
                total_tokens=705,
                cost_usd="0.00042000",
                duration_ms=840,
                success=True,
                call_time=_timestamp(self._moment(60)),
                temperature=0.1,
                max_tokens=512,
                session_query_type="enhanced",
                session_intent="aggregation",
            )
        )
        event(
            session_completed=events_pb2.SessionCompleted(
                user_id=self.user_id,
                status=resources_pb2.SESSION_STATUS_COMPLETED,
                end_time=_timestamp(self._moment(900)),
                total_duration_ms=900,
                generated_sql=_SQL,
                execution_result="3 rows",
                overall_confidence=0.88,
                query_type="enhanced",
                total_tokens=705,
                api_call_count=1,
                sql_execution_recorded=True,
            )
        )
        return events


def session_runs(
    prefix: str | None = None, start_number: int = 0
) -> Iterator[SessionRun]:
    """An endless supply of distinct runs."""
    prefix = prefix or uuid.uuid4().hex[:10]
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    number = start_number
    while True:
        yield SessionRun(prefix, number, start)
        number += 1


def ingest_calls(runs: Iterator[SessionRun], sessions: int) -> list[Call]:
    """The next ``sessions`` runs as one Ingest request, as a high-volume
    caller records the sessions it has finished."""
    taken = list(itertools.islice(runs, sessions))
    operations = [
        ingest_operation(call, keep_request_id=False)
        for run in taken
        for call in run.calls()
    ]
    request = api.IngestRequest(
        request_id=f"{taken[0].session_id}-ingest", operations=operations
    )
    return [Call("Ingest", request, events=len(operations))]


def ingest_operation(
    call: Call, *, keep_request_id: bool = True
) -> api.IngestOperation:
    """The Ingest form of a unary call."""
    field = {
        "StartSession": "start_session",
        "RecordStep": "record_step",
        "AppendLogs": "append_logs",
        "RecordLlmCall": "record_llm_call",
        "CompleteSession": "complete_session",
    }[call.method]
    operation = api.IngestOperation()
    getattr(operation, field).CopyFrom(call.request)
    if not keep_request_id:
        # A bulk loader makes its retries safe with the batch's request_id.
        getattr(operation, field).request_id = ""
    return operation
