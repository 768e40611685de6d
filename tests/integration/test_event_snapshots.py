"""verify and backfill rebuild the events the relay applied, not events taken
from the current state: an LLM call recorded after the completion, a step
updated after its first terminal state, and a step that first finishes after
the completion leave the legacy rows the relay wrote, and backfill into empty
legacy tables writes those same rows again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from outbox_relay import legacy_schema as ls
from outbox_relay.backfill import backfill, validate_sinks
from outbox_relay.derive import SessionFilter
from outbox_relay.verify import CoverageReport, verify
from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.store import Store
from tests.integration.coverage_data import (
    BASE,
    drain,
    relay_for,
    snapshot,
    stamp,
    write_session,
)

SESSION = "s-1"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    yield store
    store.close()


def at(seconds: int) -> timestamp_pb2.Timestamp:
    return stamp(BASE + dt.timedelta(seconds=seconds))


def start(store: Store) -> None:
    store.start_session(
        "",
        pb.StartSessionRequest(
            session_id=SESSION,
            user_id="ann",
            query="how many orders?",
            intent="report",
            start_time=at(0),
        ),
    )


def complete(store: Store, status: Any = res.SESSION_STATUS_COMPLETED) -> None:
    store.complete_session(
        "",
        pb.CompleteSessionRequest(
            session_id=SESSION,
            status=status,
            generated_sql="SELECT count(*) FROM orders",
            error_message="" if status == res.SESSION_STATUS_COMPLETED else "boom",
            overall_confidence=0.9,
            end_time=at(10),
        ),
    )


def record_step(store: Store, step_id: str, **fields: Any) -> None:
    store.record_step(
        "",
        pb.RecordStepRequest(session_id=SESSION, step_id=step_id, **fields),
    )


def record_call(store: Store, call_id: str, tokens: int) -> None:
    store.record_llm_call(
        "",
        pb.RecordLlmCallRequest(
            session_id=SESSION,
            call_id=call_id,
            provider="openai",
            model="gpt-4o",
            input_tokens=tokens,
            output_tokens=7,
            cost_usd=0.25,
            duration_ms=300,
            call_time=at(5),
        ),
    )


def llm_call_after_completion(store: Store) -> None:
    """The completion carried one call's tokens; a second call came later."""
    start(store)
    record_call(store, "call-1", 100)
    complete(store)
    record_call(store, "call-2", 40)


def steps_updated_after_they_finished(store: Store) -> None:
    """Each legacy row comes from the step's first terminal state."""
    start(store)
    record_step(
        store,
        "pb",
        step_type="prompt-building",
        status=res.STEP_STATUS_COMPLETED,
        start_time=at(1),
        end_time=at(2),
        output_data="first prompt",
        tokens_used=12,
    )
    record_step(
        store,
        "sql",
        step_type="sql-execution",
        status=res.STEP_STATUS_COMPLETED,
        start_time=at(3),
        end_time=at(4),
    )
    record_step(
        store,
        "other",
        step_type="custom-code",
        status=res.STEP_STATUS_COMPLETED,
        end_time=at(4),
    )
    # Updated after finishing: another status, output, error and even code.
    record_step(
        store,
        "pb",
        status=res.STEP_STATUS_ERROR,
        output_data="second prompt",
        error_message="late failure",
        tokens_used=99,
    )
    record_step(
        store, "sql", status=res.STEP_STATUS_ERROR, error_message="late timeout"
    )
    record_step(store, "other", step_type="sql-execution")
    complete(store)


def sql_step_finishing_after_completion(store: Store) -> None:
    """The relay applies a failed sql step, then the completion (which leaves
    the SQL columns to it), then a successful sql step that finished after
    the completion although its end time is the earliest."""
    start(store)
    record_step(
        store,
        "sql-a",
        step_type="sql-execution",
        status=res.STEP_STATUS_ERROR,
        start_time=at(1),
        end_time=at(6),
        error_message="timeout",
    )
    complete(store)
    record_step(
        store,
        "sql-b",
        step_type="sql-execution",
        status=res.STEP_STATUS_COMPLETED,
        start_time=at(1),
        end_time=at(2),
    )


SCENARIOS: dict[str, Callable[[Store], None]] = {
    "llm_call_after_completion": llm_call_after_completion,
    "steps_updated_after_they_finished": steps_updated_after_they_finished,
    "sql_step_finishing_after_completion": sql_step_finishing_after_completion,
}


def check(store: Store) -> CoverageReport:
    return verify(store.engine, store.engine, SessionFilter(), page_size=2)


def relay_all(store: Store, database_url: str) -> None:
    with relay_for(database_url) as relay:
        drain(relay)


def empty_legacy_tables(store: Store) -> None:
    with store.engine.begin() as connection:
        for table in (*reversed(ls.LEGACY_TABLES), ls.token_usage_contributions):
            connection.execute(table.delete())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_verify_and_backfill_agree_with_the_relay(
    store: Store, database_url: str, scenario: str
) -> None:
    SCENARIOS[scenario](store)
    write_session(store, "other-session", user_id="bob")
    relay_all(store, database_url)

    report = check(store)
    assert report.covered, report.as_dict()
    relayed = snapshot(store)

    empty_legacy_tables(store)
    assert not check(store).covered
    backfill(
        store.engine,
        store.engine,
        SessionFilter(),
        validate_sinks([]),
        page_size=2,
    )
    assert snapshot(store) == relayed
    assert check(store).covered


def test_the_relay_wrote_the_completions_roll_up(
    store: Store, database_url: str
) -> None:
    """Guards the first scenario's premise: the trace holds the roll-up as
    of the completion, not the current one."""
    llm_call_after_completion(store)
    relay_all(store, database_url)
    rows = snapshot(store)
    (trace,) = rows["PromptConstructionTraces"]
    assert trace["TotalTokens"] == str(100 + 7)
    assert '"api_call_count":1' in trace["Metadata"].replace(" ", "")


def test_sql_columns_follow_the_relays_order(store: Store, database_url: str) -> None:
    """Guards the third scenario's premise: the step applied last wins,
    whatever the end times say."""
    sql_step_finishing_after_completion(store)
    relay_all(store, database_url)
    (tracking,) = snapshot(store)["PromptSuccessTracking"]
    assert tracking["SQLExecutionSuccess"] == "True"
    assert tracking["SQLExecutionError"] == "None"


def test_rows_from_before_the_snapshots_are_derived_as_before(
    store: Store, database_url: str
) -> None:
    """Rows written before migration 0002 have no stored events: their events
    come from the current state, in the order they most likely had."""
    write_session(store, "old")
    write_session(store, "open", complete=False)
    relay_all(store, database_url)
    with store.engine.begin() as connection:
        connection.execute(
            schema.sessions.update().values(
                completed_sequence=None, completed_event=None
            )
        )
        connection.execute(
            schema.steps.update().values(finished_sequence=None, finished_event=None)
        )
        connection.execute(schema.llm_calls.update().values(sequence=None))
    assert check(store).covered

    relayed = snapshot(store)
    empty_legacy_tables(store)
    backfill(store.engine, store.engine, SessionFilter(), validate_sinks([]))
    assert snapshot(store) == relayed


def outbox_payloads(store: Store) -> dict[tuple[str, int], events_pb2.OutboxEvent]:
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(schema.outbox))
        return {
            (row.session_id, row.sequence): events_pb2.OutboxEvent.FromString(
                row.payload
            )
            for row in rows
        }


def assert_snapshots_are_the_outbox_events(store: Store) -> None:
    """Every stored snapshot is the payload of the event at its sequence."""
    events = outbox_payloads(store)
    kept = 0
    with store.engine.connect() as connection:
        for row in connection.execute(sa.select(schema.sessions)):
            if row.status == "running":
                assert row.completed_sequence is None
                continue
            event = events[(row.session_id, row.completed_sequence)]
            assert event.session_completed.SerializeToString() == row.completed_event
            kept += 1
        for row in connection.execute(sa.select(schema.steps)):
            if not row.finished_event_written:
                assert row.finished_sequence is None
                continue
            event = events[(row.session_id, row.finished_sequence)]
            assert event.step_finished.step_id == row.step_id
            assert event.step_finished.SerializeToString() == row.finished_event
            kept += 1
        for row in connection.execute(sa.select(schema.llm_calls)):
            event = events[(row.session_id, row.sequence)]
            assert event.llm_call_recorded.call_id == row.call_id
            kept += 1
    started = sum(1 for e in events.values() if e.HasField("session_started"))
    assert kept == len(events) - started


def test_snapshots_are_the_events_written_by_single_calls(store: Store) -> None:
    steps_updated_after_they_finished(store)
    record_call(store, "late-call", 5)
    assert_snapshots_are_the_outbox_events(store)


def test_snapshots_are_the_events_written_by_ingest(store: Store) -> None:
    start(store)
    requests = [
        pb.RecordStepRequest(
            session_id=SESSION,
            step_id="pb",
            step_type="prompt-building",
            status=res.STEP_STATUS_COMPLETED,
            output_data="first",
        ),
        pb.RecordStepRequest(
            session_id=SESSION,
            step_id="new",
            step_type="sql-execution",
            status=res.STEP_STATUS_COMPLETED,
        ),
        pb.RecordStepRequest(
            session_id=SESSION,
            step_id="new",
            status=res.STEP_STATUS_ERROR,
            error_message="later",
        ),
        pb.CompleteSessionRequest(
            session_id=SESSION, status=res.SESSION_STATUS_COMPLETED
        ),
        pb.RecordLlmCallRequest(session_id=SESSION, call_id="c1", input_tokens=3),
        pb.RecordStepRequest(
            session_id=SESSION,
            step_id="pb",
            status=res.STEP_STATUS_ERROR,
            output_data="second",
        ),
    ]
    operations = []
    for request in requests:
        operation = pb.IngestOperation()
        field = {
            pb.RecordStepRequest: "record_step",
            pb.CompleteSessionRequest: "complete_session",
            pb.RecordLlmCallRequest: "record_llm_call",
        }[type(request)]
        getattr(operation, field).CopyFrom(request)
        operations.append(operation)
    # Split in two batches: the second updates steps the first stored.
    store.ingest("", pb.IngestRequest(request_id="b1", operations=operations[:3]))
    store.ingest("", pb.IngestRequest(request_id="b2", operations=operations[3:]))
    assert_snapshots_are_the_outbox_events(store)
    with store.engine.connect() as connection:
        first = connection.execute(
            sa.select(schema.steps.c.finished_event).where(
                schema.steps.c.step_id == "pb"
            )
        ).scalar_one()
    assert events_pb2.StepFinished.FromString(first).output_data == "first"
