"""Sessions written through the store, and the relay drained, for the verify,
backfill, analytics and metrics tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from outbox_relay import legacy_schema as ls
from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.store import Store

BASE = dt.datetime(2026, 3, 1, 9, 0, 0)


def stamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def write_session(
    store: Store,
    session_id: str,
    *,
    user_id: str = "alice",
    day: int = 0,
    calls: int = 2,
    complete: bool = True,
    intent: str = "report",
    prompt_steps: bool = True,
) -> None:
    """A session with a prompt-building step and its child, an sql-execution
    step, ``calls`` LLM calls, completed unless ``complete`` is False."""
    start = BASE + dt.timedelta(days=day)
    store.start_session(
        "",
        pb.StartSessionRequest(
            session_id=session_id,
            user_id=user_id,
            query=f"how many orders in {session_id}?",
            intent=intent,
            domain="sales",
            template="t1",
            tables_retrieved=["orders", "customers"],
            start_time=stamp(start),
        ),
    )
    steps = [
        ("pb", "prompt-building", "", res.STEP_STATUS_COMPLETED),
        ("ctx", "context-gathering", "pb", res.STEP_STATUS_COMPLETED),
        ("sql", "sql-execution", "", res.STEP_STATUS_ERROR),
    ]
    if not prompt_steps:
        steps = [("an", "semantic-analysis", "", res.STEP_STATUS_COMPLETED)]
    for step_id, code, parent, status in steps:
        store.record_step(
            "",
            pb.RecordStepRequest(
                session_id=session_id,
                step_id=step_id,
                step_type=code,
                parent_step_id=parent,
                status=status,
                start_time=stamp(start + dt.timedelta(seconds=1)),
                end_time=stamp(start + dt.timedelta(seconds=2)),
                confidence=0.85,
                output_data=f"output of {step_id}",
                error_message="timeout" if status == res.STEP_STATUS_ERROR else "",
                tokens_used=12,
            ),
        )
    for index in range(calls):
        store.record_llm_call(
            "",
            pb.RecordLlmCallRequest(
                session_id=session_id,
                call_id=f"{session_id}-call-{index}",
                step_id=steps[0][0],
                provider="openai",
                model="gpt-4o",
                prompt_text="prompt",
                response_text="SELECT 1",
                input_tokens=100 + index,
                output_tokens=20,
                cost_usd=0.00123457,
                duration_ms=300,
                temperature=0.2,
                max_tokens=500,
                call_time=stamp(start + dt.timedelta(seconds=3 + index)),
            ),
        )
    if complete:
        store.complete_session(
            "",
            pb.CompleteSessionRequest(
                session_id=session_id,
                status=res.SESSION_STATUS_COMPLETED,
                generated_sql="SELECT count(*) FROM orders",
                overall_confidence=0.9,
                end_time=stamp(start + dt.timedelta(seconds=10)),
            ),
        )


def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every legacy row by its natural key, without the columns that say when
    a row was written or that the database numbers."""
    skip = {"Id", "CreatedAt", "UpdatedAt", "UpdatedDate"}
    keys = {
        "PromptSuccessTracking": ("SessionId",),
        "PromptConstructionTraces": ("TraceId",),
        "PromptConstructionSteps": ("Id",),
        "TokenUsageAnalytics": ("UserId", "Date", "RequestType", "IntentType"),
        "LLMUsageLogs": ("RequestId",),
    }
    shot: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as connection:
        for table in ls.LEGACY_TABLES:
            order = [table.c[name] for name in keys[table.name]]
            rows = connection.execute(sa.select(table).order_by(*order)).mappings()
            shot[table.name] = [
                {
                    k: str(v)
                    for k, v in row.items()
                    if k not in skip
                    or (table.name == "PromptConstructionSteps" and k == "Id")
                }
                for row in rows
            ]
    return shot


def drain(relay: Relay) -> None:
    """Runs the relay until the outbox has nothing more for it."""
    for _ in range(1000):
        if relay.run_once() == 0:
            return
    raise AssertionError("relay did not drain")


@contextmanager
def relay_for(
    database_url: str, legacy_database_url: str | None = None, **settings: object
) -> Iterator[Relay]:
    relay = Relay(
        RelaySettings(
            database_url=database_url,
            legacy_database_url=legacy_database_url,
            **settings,  # type: ignore[arg-type]
        )
    )
    try:
        yield relay
    finally:
        relay.close()
