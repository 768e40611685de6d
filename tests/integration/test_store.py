"""The store on both databases: a whole lifecycle, idempotent retries,
conflicts, and exactly one outbox event per accepted fact."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from server.store import Store
from server.validation import Limits
from tests.integration.store_helpers import T, all_counts, outbox_events, start


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url, limits=Limits(max_steps_per_session=5))
    yield store
    store.close()


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=1_800_000_000 + seconds)


def run_pipeline(store: Store) -> None:
    store.start_session(
        T,
        start(
            intent="count",
            query_type="enhanced",
            tables_retrieved=["Orders"],
            start_time=ts(0),
        ),
    )
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="pb",
            step_type="prompt-building",
            status=res.STEP_STATUS_RUNNING,
            start_time=ts(1),
        ),
    )
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="pa",
            step_type="prompt-assembly",
            status=res.STEP_STATUS_COMPLETED,
            start_time=ts(1),
            end_time=ts(2),
            confidence=0.87654,
            output_data="PROMPT",
            tokens_used=12,
            logs=[
                pb.LogInput(message="assembled"),
                pb.LogInput(
                    message="parent line", step_id="pb", level=res.LOG_LEVEL_WARNING
                ),
            ],
        ),
    )
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="pb",
            status=res.STEP_STATUS_COMPLETED,
            end_time=ts(3),
            output_data="FINAL",
        ),
    )
    store.record_llm_call(
        T,
        pb.RecordLlmCallRequest(
            session_id="s1",
            step_id="pa",
            call_id="c1",
            provider="openai",
            model="gpt-a",
            input_tokens=100,
            output_tokens=20,
            cost_usd=0.0123456789,
            duration_ms=300,
            temperature=0.1,
            max_tokens=500,
            confidence=0.5,
            call_time=ts(4),
        ),
    )
    store.record_llm_call(
        T,
        pb.RecordLlmCallRequest(
            session_id="s1",
            call_id="c2",
            model="gpt-b",
            input_tokens=1,
            output_tokens=2,
            cost_usd=0.5,
            duration_ms=10,
            call_time=ts(5),
        ),
    )
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="sql",
            step_type="sql-execution",
            status=res.STEP_STATUS_ERROR,
            error_message="timeout",
        ),
    )
    store.append_logs(
        T,
        pb.AppendLogsRequest(
            session_id="s1", logs=[pb.LogInput(message="session line")]
        ),
    )
    store.complete_session(
        T,
        pb.CompleteSessionRequest(
            session_id="s1",
            status=res.SESSION_STATUS_COMPLETED,
            generated_sql="SELECT 1",
            overall_confidence=0.9,
            end_time=ts(10),
        ),
    )


def test_whole_lifecycle_reads_back(store: Store) -> None:
    run_pipeline(store)
    session = store.get_session(T, "s1")

    assert session.status == res.SESSION_STATUS_COMPLETED
    assert session.total_duration_ms == 10_000
    assert session.overall_confidence == pytest.approx(0.9)
    assert list(session.tables_retrieved) == ["Orders"]
    assert [s.step_id for s in session.steps] == ["pb", "sql"]
    building = session.steps[0]
    assert building.name == "Prompt Construction" and building.step_order == 6
    assert building.output_data == "FINAL" and building.duration_ms == 2000
    assert [c.step_id for c in building.children] == ["pa"]
    assembly = building.children[0]
    assert assembly.parent_step_id == "pb"
    assert assembly.confidence == pytest.approx(0.8765)
    assert [entry.message for entry in assembly.logs] == ["assembled"]
    assert [entry.message for entry in building.logs] == ["parent line"]
    assert building.logs[0].level == res.LOG_LEVEL_WARNING
    assert session.steps[1].end_time.seconds > 0
    assert [entry.message for entry in session.logs] == ["session line"]
    assert [c.call_id for c in session.llm_calls] == ["c1", "c2"]
    assert session.llm_calls[0].cost_usd == pytest.approx(0.01234568)
    roll_up = session.transparency
    assert (roll_up.prompt_tokens, roll_up.completion_tokens, roll_up.total_tokens) == (
        101,
        22,
        123,
    )
    assert roll_up.api_call_count == 2 and roll_up.ai_processing_time_ms == 310
    assert roll_up.estimated_cost_usd == pytest.approx(0.512346)
    assert roll_up.model == "gpt-b"
    assert roll_up.temperature == pytest.approx(0.1)  # the latest that sent one
    assert roll_up.confidence == pytest.approx(0.5)
    assert session.coverage.status == res.COVERAGE_STATUS_PENDING
    assert (session.coverage.total_events, session.coverage.pending_events) == (7, 7)


def test_one_event_per_fact_with_gapless_sequences(store: Store) -> None:
    run_pipeline(store)
    events = outbox_events(store)
    assert [(e.sequence, e.WhichOneof("payload")) for e in events] == [
        (1, "session_started"),
        (2, "step_finished"),
        (3, "step_finished"),
        (4, "llm_call_recorded"),
        (5, "llm_call_recorded"),
        (6, "step_finished"),
        (7, "session_completed"),
    ]
    started = events[0].session_started
    assert (started.user_id, started.intent, started.query_type) == (
        "alice",
        "count",
        "enhanced",
    )
    assembly, building, sql = (events[i].step_finished for i in (1, 2, 5))
    assert (assembly.step_id, assembly.parent_step_id, assembly.parent_step_type) == (
        "pa",
        "pb",
        "prompt-building",
    )
    assert assembly.confidence == pytest.approx(0.8765)
    assert building.output_data == "FINAL" and building.parent_step_type == ""
    assert sql.status == res.STEP_STATUS_ERROR and sql.error_message == "timeout"
    call = events[3].llm_call_recorded
    assert call.cost_usd == "0.01234568"
    assert (call.session_query_type, call.session_intent, call.user_id) == (
        "enhanced",
        "count",
        "alice",
    )
    assert call.temperature == pytest.approx(0.1) and call.max_tokens == 500
    assert events[4].llm_call_recorded.cost_usd == "0.50000000"
    completed = events[6].session_completed
    assert completed.total_tokens == 123 and completed.api_call_count == 2
    assert completed.sql_execution_recorded
    assert completed.total_duration_ms == 10_000
    with store.engine.connect() as connection:
        sequence = connection.execute(
            sa.select(schema.sessions.c.event_sequence)
        ).scalar_one()
    assert sequence == 7


def test_step_updates_after_terminal_write_no_second_event(store: Store) -> None:
    store.start_session(T, start())
    finish = pb.RecordStepRequest(
        session_id="s1", step_id="a", step_type="auth", status=res.STEP_STATUS_COMPLETED
    )
    store.record_step(T, finish)
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="a",
            status=res.STEP_STATUS_ERROR,
            description="later",
        ),
    )
    step = store.get_session(T, "s1").steps[0]
    assert step.status == res.STEP_STATUS_ERROR and step.description == "later"
    assert step.name == "Authentication & Authorization"
    assert [e.WhichOneof("payload") for e in outbox_events(store)] == [
        "session_started",
        "step_finished",
    ]


def test_update_keeps_unset_fields(store: Store) -> None:
    store.start_session(T, start())
    store.record_step(
        T,
        pb.RecordStepRequest(
            session_id="s1",
            step_id="x",
            step_type="custom-code",
            name="Custom",
            step_order=42,
            input_data="in",
            confidence=0.3,
            retry_count=2,
        ),
    )
    response = store.record_step(
        T, pb.RecordStepRequest(session_id="s1", step_id="x", output_data="out")
    )
    step = response.step
    assert (step.step_type, step.name, step.step_order) == ("custom-code", "Custom", 42)
    assert (step.input_data, step.output_data, step.retry_count) == ("in", "out", 2)
    assert step.status == res.STEP_STATUS_PENDING
    assert step.confidence == pytest.approx(0.3)


def test_request_id_retry_has_one_effect(store: Store) -> None:
    store.start_session(T, start())
    request = pb.AppendLogsRequest(
        request_id="r-1", session_id="s1", logs=[pb.LogInput(message="once")]
    )
    first = store.append_logs(T, request)
    before = all_counts(store)
    again = store.append_logs(T, request)
    assert again == first
    assert all_counts(store) == before
    other = pb.AppendLogsRequest(
        request_id="r-1", session_id="s1", logs=[pb.LogInput(message="other")]
    )
    with pytest.raises(AlreadyExists):
        store.append_logs(T, other)


def test_request_id_retry_of_generated_ids(store: Store) -> None:
    request = pb.StartSessionRequest(request_id="r-2", user_id="u", query="q")
    first = store.start_session(T, request)
    assert (
        store.start_session(T, request).session.session_id == first.session.session_id
    )
    call = pb.RecordLlmCallRequest(
        request_id="r-3", session_id=first.session.session_id, input_tokens=3
    )
    made = store.record_llm_call(T, call)
    assert store.record_llm_call(T, call).call.call_id == made.call.call_id
    assert len(outbox_events(store)) == 2


def test_client_ids_answer_as_the_first_call(store: Store) -> None:
    first = store.start_session(T, start(intent="a"))
    assert store.start_session(T, start(intent="a")).session == first.session
    with pytest.raises(AlreadyExists):
        store.start_session(T, start(intent="b"))

    call = pb.RecordLlmCallRequest(session_id="s1", call_id="c1", input_tokens=5)
    made = store.record_llm_call(T, call)
    assert store.record_llm_call(T, call).call == made.call
    with pytest.raises(AlreadyExists):
        store.record_llm_call(
            T, pb.RecordLlmCallRequest(session_id="s1", call_id="c1", input_tokens=6)
        )
    assert store.get_session(T, "s1").transparency.api_call_count == 1

    done = pb.CompleteSessionRequest(
        session_id="s1", status=res.SESSION_STATUS_ERROR, error_message="boom"
    )
    completed = store.complete_session(T, done)
    assert store.complete_session(T, done).session == completed.session
    with pytest.raises(FailedPrecondition):
        store.complete_session(
            T,
            pb.CompleteSessionRequest(
                session_id="s1", status=res.SESSION_STATUS_COMPLETED
            ),
        )
    assert [e.sequence for e in outbox_events(store)] == [1, 2, 3]


def test_unknown_session_and_steps(store: Store) -> None:
    with pytest.raises(NotFound):
        store.record_step(
            T, pb.RecordStepRequest(session_id="nope", step_id="a", step_type="auth")
        )
    with pytest.raises(NotFound):
        store.get_session(T, "nope")
    with pytest.raises(NotFound):
        store.get_coverage(T, "nope")
    store.start_session(T, start())
    with pytest.raises(InvalidArgument) as raised:
        store.append_logs(
            T,
            pb.AppendLogsRequest(
                session_id="s1",
                logs=[
                    pb.LogInput(message="ok"),
                    pb.LogInput(message="m", step_id="ghost"),
                ],
            ),
        )
    assert [v.field for v in raised.value.violations] == ["logs[1].step_id"]
    with pytest.raises(InvalidArgument) as raised:
        store.record_step(T, pb.RecordStepRequest(session_id="s1", step_id="new"))
    assert [v.field for v in raised.value.violations] == ["step_type"]
    with pytest.raises(InvalidArgument) as raised:
        store.record_step(
            T,
            pb.RecordStepRequest(
                session_id="s1", step_id="b", step_type="x", parent_step_id="ghost"
            ),
        )
    assert [v.field for v in raised.value.violations] == ["parent_step_id"]
    with pytest.raises(InvalidArgument) as raised:
        store.record_llm_call(
            T, pb.RecordLlmCallRequest(session_id="s1", step_id="ghost")
        )
    assert [v.field for v in raised.value.violations] == ["step_id"]
    with pytest.raises(InvalidArgument) as raised:
        store.complete_session(
            T,
            pb.CompleteSessionRequest(
                session_id="s1",
                status=res.SESSION_STATUS_COMPLETED,
                end_time=timestamp_pb2.Timestamp(seconds=1),
            ),
        )
    assert [v.field for v in raised.value.violations] == ["end_time"]
    assert [e.sequence for e in outbox_events(store)] == [1]


def test_step_limit_per_session(store: Store) -> None:
    store.start_session(T, start())
    for index in range(5):
        store.record_step(
            T, pb.RecordStepRequest(session_id="s1", step_id=f"s{index}", step_type="x")
        )
    with pytest.raises(ResourceExhausted):
        store.record_step(
            T, pb.RecordStepRequest(session_id="s1", step_id="s5", step_type="x")
        )
    store.record_step(T, pb.RecordStepRequest(session_id="s1", step_id="s4", name="n"))


def test_session_cost_total_is_bounded(store: Store) -> None:
    store.start_session(T, start())
    for index in range(9):
        store.record_llm_call(
            T,
            pb.RecordLlmCallRequest(
                session_id="s1", call_id=f"c{index}", cost_usd=1000
            ),
        )
    with pytest.raises(InvalidArgument) as raised:
        store.record_llm_call(
            T, pb.RecordLlmCallRequest(session_id="s1", call_id="c9", cost_usd=1000)
        )
    assert [v.field for v in raised.value.violations] == ["cost_usd"]
    roll_up = store.get_session(T, "s1").transparency
    assert Decimal(str(roll_up.estimated_cost_usd)) == Decimal("9000")
    assert len(outbox_events(store)) == 10


def test_commit_listeners_hear_touched_sessions(store: Store) -> None:
    heard: list[frozenset[str]] = []
    store.add_commit_listener(heard.append)
    store.start_session(T, start())
    store.start_session(T, start("s2"))
    with pytest.raises(NotFound):
        store.append_logs(
            T, pb.AppendLogsRequest(session_id="zz", logs=[pb.LogInput(message="m")])
        )
    store.ingest(
        T,
        pb.IngestRequest(
            operations=[
                pb.IngestOperation(
                    append_logs=pb.AppendLogsRequest(
                        session_id=sid, logs=[pb.LogInput(message="m")]
                    )
                )
                for sid in ("s1", "s2")
            ]
        ),
    )
    assert heard == [frozenset({"s1"}), frozenset({"s2"}), frozenset({"s1", "s2"})]
