"""Ingest applies its operations in memory and writes each table once; the
result must be exactly what the same operations give as single calls, one
after another: the same rows, the same events in the same order, the same
replays and the same errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProcessFlowError,
    ResourceExhausted,
)
from server.store import Store
from server.validation import Limits
from tests.integration.store_helpers import T, all_counts, outbox_events, start
from tests.support.databases import PostgresDatabases, SqliteDatabases

FIELDS = {
    pb.StartSessionRequest: "start_session",
    pb.RecordStepRequest: "record_step",
    pb.AppendLogsRequest: "append_logs",
    pb.RecordLlmCallRequest: "record_llm_call",
    pb.CompleteSessionRequest: "complete_session",
}
# Columns that hold the clock of the call (one per call here, one per batch
# there) or ids the database or a UUID assigns.
VOLATILE = {"id", "created_at", "updated_at", "next_attempt_at", "event_id"}


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=1_800_000_000 + seconds)


def step(session_id: str, step_id: str, **fields: Any) -> pb.RecordStepRequest:
    return pb.RecordStepRequest(session_id=session_id, step_id=step_id, **fields)


def call(session_id: str, call_id: str, **fields: Any) -> pb.RecordLlmCallRequest:
    return pb.RecordLlmCallRequest(session_id=session_id, call_id=call_id, **fields)


def before() -> list[Message]:
    """State stored before the batch: a session with steps and a call."""
    return [
        start("s0", intent="count", start_time=ts(0)),
        step(
            "s0",
            "pb",
            step_type="prompt-building",
            status=res.STEP_STATUS_RUNNING,
            start_time=ts(1),
            input_data="in",
        ),
        step(
            "s0",
            "sq",
            step_type="sql-execution",
            status=res.STEP_STATUS_COMPLETED,
            start_time=ts(1),
            end_time=ts(2),
        ),
        call(
            "s0",
            "c0",
            model="m0",
            input_tokens=5,
            output_tokens=1,
            cost_usd=0.0123456789,
            temperature=0.2,
            call_time=ts(2),
        ),
    ]


def batch() -> list[Message]:
    metadata = struct_pb2.Struct()
    metadata.update({"k": [1, "two"], "n": None})
    done = pb.CompleteSessionRequest(
        session_id="s1",
        status=res.SESSION_STATUS_COMPLETED,
        generated_sql="SELECT 1",
        overall_confidence=0.87654,
        end_time=ts(30),
    )
    return [
        # A stored session: a catalog child finds the stored parent, the
        # parent is updated to its first terminal status, then again.
        step(
            "s0",
            "pa",
            step_type="prompt-assembly",
            status=res.STEP_STATUS_COMPLETED,
            start_time=ts(3),
            end_time=ts(4),
            confidence=0.5,
            metadata=metadata,
            logs=[
                pb.LogInput(message="child", timestamp=ts(4)),
                pb.LogInput(
                    message="to parent",
                    step_id="pb",
                    timestamp=ts(4),
                    level=res.LOG_LEVEL_WARNING,
                ),
            ],
        ),
        step(
            "s0",
            "pb",
            status=res.STEP_STATUS_COMPLETED,
            end_time=ts(5),
            output_data="PROMPT",
        ),
        step("s0", "pb", status=res.STEP_STATUS_ERROR, description="later"),
        call(
            "s0",
            "c1",
            step_id="pa",
            input_tokens=7,
            output_tokens=3,
            cost_usd=0.5,
            confidence=0.25,
            call_time=ts(6),
        ),
        call(
            "s0",
            "c0",
            model="m0",
            input_tokens=5,
            output_tokens=1,
            cost_usd=0.0123456789,
            temperature=0.2,
            call_time=ts(2),
        ),
        pb.CompleteSessionRequest(
            session_id="s0",
            status=res.SESSION_STATUS_ERROR,
            error_message="boom",
            end_time=ts(7),
        ),
        # A session started in the batch, with everything on it.
        start(
            "s1",
            intent="sum",
            tables_retrieved=["a", "b"],
            metadata=metadata,
            start_time=ts(10),
        ),
        start(
            "s1",
            intent="sum",
            tables_retrieved=["a", "b"],
            metadata=metadata,
            start_time=ts(10),
        ),
        step(
            "s1",
            "b",
            step_type="prompt-building",
            status=res.STEP_STATUS_RUNNING,
            start_time=ts(11),
        ),
        step(
            "s1",
            "c",
            step_type="context-gathering",
            status=res.STEP_STATUS_COMPLETED,
            start_time=ts(11),
            end_time=ts(12),
            tokens_used=9,
            retry_count=2,
        ),
        step("s1", "x", step_type="custom", name="Custom", step_order=42),
        step(
            "s1",
            "x",
            output_data="out",
            status=res.STEP_STATUS_SKIPPED,
            end_time=ts(13),
            start_time=ts(12),
        ),
        pb.AppendLogsRequest(
            request_id="in-1",
            session_id="s1",
            logs=[
                pb.LogInput(message="a", timestamp=ts(14)),
                pb.LogInput(
                    message="b", step_id="x", timestamp=ts(14), details=metadata
                ),
            ],
        ),
        pb.AppendLogsRequest(
            request_id="in-1",
            session_id="s1",
            logs=[
                pb.LogInput(message="a", timestamp=ts(14)),
                pb.LogInput(
                    message="b", step_id="x", timestamp=ts(14), details=metadata
                ),
            ],
        ),
        call(
            "s1",
            "c2",
            request_id="in-2",
            model="m2",
            input_tokens=100,
            output_tokens=20,
            cost_usd=0.00042,
            max_tokens=500,
            call_time=ts(15),
        ),
        call(
            "s1",
            "c3",
            input_tokens=1,
            output_tokens=1,
            cost_usd=0.1,
            success=False,
            error_message="e",
            call_time=ts(16),
        ),
        step(
            "s1",
            "sql",
            step_type="sql-execution",
            status=res.STEP_STATUS_ERROR,
            error_message="timeout",
            start_time=ts(17),
            end_time=ts(18),
        ),
        done,
        done,
        start("s2", request_id="in-3", start_time=ts(20)),
        pb.CompleteSessionRequest(
            session_id="s2",
            request_id="in-4",
            status=res.SESSION_STATUS_CANCELLED,
            end_time=ts(21),
        ),
        # After the events they would change: a finished step of a session
        # started in the batch updated again (its finished_* columns stay),
        # a call on a completed session (its completed_* columns stay).
        step("s1", "c", status=res.STEP_STATUS_ERROR, output_data="later"),
        call("s0", "c4", input_tokens=2, output_tokens=2, call_time=ts(22)),
    ]


def single(store: Store, request: Message) -> Message:
    method = {
        "start_session": store.start_session,
        "record_step": store.record_step,
        "append_logs": store.append_logs,
        "record_llm_call": store.record_llm_call,
        "complete_session": store.complete_session,
    }[FIELDS[type(request)]]
    response: Message = method(T, request)  # type: ignore[operator]
    return response


def as_batch(requests: list[Message], request_id: str = "batch") -> pb.IngestRequest:
    operations = []
    for request in requests:
        operation = pb.IngestOperation()
        getattr(operation, FIELDS[type(request)]).CopyFrom(request)
        operations.append(operation)
    return pb.IngestRequest(request_id=request_id, operations=operations)


def table_rows(store: Store, table: sa.Table) -> list[dict[str, Any]]:
    keys = [c for c in table.c if c.name not in VOLATILE]
    order = [
        c
        for c in table.c
        if c.name in ("session_id", "step_id", "call_id", "sequence", "request_id")
    ]
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(*keys).order_by(
                *order, table.c.id if "id" in table.c else keys[0]
            )
        ).mappings()
        return [
            {k: v for k, v in row.items() if k != "response"}
            for row in rows
            # The batch's own record has no single-call counterpart.
            if row.get("method") != "Ingest"
        ]


def events(store: Store) -> list[events_pb2.OutboxEvent]:
    found = []
    for event in outbox_events(store):
        event.ClearField("event_id")
        event.ClearField("occurred_at")
        found.append(event)
    return found


@pytest.fixture
def twin_stores(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Store, Store]]:
    """Two empty stores on the same engine kind."""
    postgres: PostgresDatabases | None = None
    if database_url.startswith("sqlite"):
        sqlite: SqliteDatabases = request.getfixturevalue("sqlite_databases")
        other = sqlite.new(tmp_path)
    else:
        postgres = request.getfixturevalue("postgres_databases")
        assert isinstance(postgres, PostgresDatabases)
        other = postgres.new()
    first = Store.connect(database_url, limits=Limits(max_steps_per_session=6))
    second = Store.connect(other, limits=Limits(max_steps_per_session=6))
    yield first, second
    first.close()
    second.close()
    if postgres is not None:
        postgres.drop(other)


def test_ingest_writes_what_the_single_calls_write(
    twin_stores: tuple[Store, Store],
) -> None:
    singles, batched = twin_stores
    for store in twin_stores:
        for request in before():
            single(store, request)

    answers = [single(singles, request) for request in batch()]
    response = batched.ingest(T, as_batch(batch()))

    assert len(response.results) == len(answers)
    for result, request, answer in zip(response.results, batch(), answers, strict=True):
        assert result.session_id == request.session_id  # type: ignore[attr-defined]
        if isinstance(answer, pb.RecordLlmCallResponse):
            assert result.call_id == answer.call.call_id
        if isinstance(answer, pb.AppendLogsResponse):
            assert result.logs_appended == len(answer.logs)
    for table in (
        schema.sessions,
        schema.steps,
        schema.logs,
        schema.llm_calls,
        schema.transparency,
        schema.requests,
    ):
        assert table_rows(batched, table) == table_rows(singles, table), table.name
    assert events(batched) == events(singles)
    assert all_counts(batched) == {
        **all_counts(singles),
        "process_flow_requests": all_counts(singles)["process_flow_requests"] + 1,
    }

    # The inner request ids answer later single calls as their first call did.
    for store in twin_stores:
        counts = all_counts(store)
        again = single(store, batch()[13])
        assert isinstance(again, pb.AppendLogsResponse) and len(again.logs) == 2
        assert all_counts(store) == counts
    assert single(batched, batch()[13]) == single(singles, batch()[13])
    # And the whole batch answers again without writing anything.
    counts = all_counts(batched)
    assert batched.ingest(T, as_batch(batch())) == response
    assert all_counts(batched) == counts


FAILURES = [
    ("other content", [start("s0", intent="other")], AlreadyExists),
    ("unknown session", [step("nope", "a", step_type="auth")], NotFound),
    (
        "missing parent",
        [step("s0", "a", step_type="x", parent_step_id="ghost")],
        InvalidArgument,
    ),
    (
        "missing log step",
        [
            pb.AppendLogsRequest(
                session_id="s0", logs=[pb.LogInput(message="m", step_id="ghost")]
            )
        ],
        InvalidArgument,
    ),
    (
        "step limit",
        [step("s0", f"n{i}", step_type="x") for i in range(5)],
        ResourceExhausted,
    ),
    (
        "cost bound",
        [call("s0", f"k{i}", cost_usd=5000) for i in range(2)],
        InvalidArgument,
    ),
    (
        "completed twice",
        [
            pb.CompleteSessionRequest(session_id="s0", status=res.SESSION_STATUS_ERROR),
            pb.CompleteSessionRequest(
                session_id="s0", status=res.SESSION_STATUS_COMPLETED
            ),
        ],
        FailedPrecondition,
    ),
    ("call id of another session", [start("s9"), call("s9", "c0")], AlreadyExists),
    (
        "end before start",
        [
            pb.CompleteSessionRequest(
                session_id="s0", status=res.SESSION_STATUS_ERROR, end_time=ts(-5)
            )
        ],
        InvalidArgument,
    ),
]


@pytest.mark.parametrize(
    ("requests", "error"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_ingest_fails_as_the_single_calls_fail(
    twin_stores: tuple[Store, Store], requests: list[Message], error: type[Exception]
) -> None:
    singles, batched = twin_stores
    for store in twin_stores:
        for request in before():
            single(store, request)
    counts = all_counts(batched)

    failed_at = -1
    single_error: ProcessFlowError | None = None
    for index, request in enumerate(requests):
        try:
            single(singles, request)
        except ProcessFlowError as failure:
            failed_at, single_error = index, failure
            break
    assert single_error is not None and isinstance(single_error, error)

    with pytest.raises(error) as raised:
        batched.ingest(T, as_batch(requests))
    batch_error = raised.value
    assert isinstance(batch_error, ProcessFlowError)
    kind = FIELDS[type(requests[failed_at])]
    path = f"operations[{failed_at}].{kind}"
    if isinstance(single_error, InvalidArgument):
        assert isinstance(batch_error, InvalidArgument)
        assert [v.field for v in batch_error.violations] == [
            f"{path}.{v.field}" for v in single_error.violations
        ]
    else:
        assert batch_error.message == f"{path}: {single_error.message}"
    assert all_counts(batched) == counts


def test_concurrent_batches_sharing_sessions_keep_order(pg_url: str) -> None:
    store = Store.connect(pg_url, pool_size=8)
    try:
        for number in range(6):
            store.start_session(T, start(f"s{number}"))
        ids = [f"s{n}" for n in range(6)]
        errors: list[BaseException] = []

        def run(worker: int) -> None:
            # Each worker names the sessions in another order.
            order = ids[worker % 6 :] + ids[: worker % 6]
            try:
                for round_ in range(4):
                    store.ingest(
                        T,
                        as_batch(
                            [call(sid, f"w{worker}-r{round_}-{sid}") for sid in order]
                            + [start(f"new-{round_}")],
                            request_id=f"w{worker}-r{round_}",
                        ),
                    )
            except BaseException as error:  # collected for the assertion
                errors.append(error)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        by_session: dict[str, list[int]] = {}
        for event in outbox_events(store):
            by_session.setdefault(event.session_id, []).append(event.sequence)
        for sid in ids:
            assert by_session[sid] == list(range(1, 26)), sid
        for round_ in range(4):
            assert by_session[f"new-{round_}"] == [1]
        assert store.get_session(T, "s0").transparency.api_call_count == 24
    finally:
        store.close()


def test_concurrent_duplicate_batches_have_one_effect(pg_url: str) -> None:
    store = Store.connect(pg_url, pool_size=8)
    try:
        request = as_batch(
            [
                start("d1"),
                step("d1", "a", step_type="auth", status=res.STEP_STATUS_COMPLETED),
                pb.AppendLogsRequest(session_id="d1", logs=[pb.LogInput(message="m")]),
            ],
            request_id="dup",
        )
        answers: list[Any] = [None] * 6
        barrier = threading.Barrier(6)

        def run(index: int) -> None:
            barrier.wait()
            try:
                answers[index] = store.ingest(T, request)
            except BaseException as error:  # collected for the assertion
                answers[index] = error

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(answer == answers[0] for answer in answers), answers
        counts = all_counts(store)
        assert (counts["process_flow_sessions"], counts["process_flow_logs"]) == (1, 1)
        assert [e.sequence for e in outbox_events(store)] == [1, 2]
    finally:
        store.close()


def test_operation_request_ids_beside_unanswered_log_lines(
    twin_stores: tuple[Store, Store],
) -> None:
    """An operation with its own request_id next to log lines that no such
    operation answers for (the demo's batches look like this)."""
    _, batched = twin_stores
    requests: list[Message] = [
        start("s9", request_id="start-s9"),
        pb.AppendLogsRequest(
            session_id="s9",
            logs=[pb.LogInput(message="one"), pb.LogInput(message="two")],
        ),
        step("s9", "auth", step_type="auth", request_id="auth-s9"),
    ]
    response = batched.ingest(T, as_batch(requests))
    assert [r.session_id for r in response.results] == ["s9", "s9", "s9"]
    assert response.results[1].logs_appended == 2
    replayed = batched.ingest(T, as_batch(requests[:1], request_id="again"))
    assert replayed.results[0].session_id == "s9"
    assert all_counts(batched)[schema.logs.name] == 2
