"""Rows and outbox events commit together or not at all; Ingest is all or
nothing; concurrent writers keep one effect per request and gapless
sequences."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.errors import AlreadyExists, InvalidArgument, NotFound
from server.store import Store, outbox
from tests.integration.store_helpers import T, all_counts, outbox_events, start


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url, pool_size=10)
    yield store
    store.close()


class InjectedFault(Exception):
    pass


def failing_insert(*_args: Any) -> None:
    raise InjectedFault("between the rows and the outbox")


WRITES = [
    ("start", lambda s: s.start_session(T, start("s2", request_id="r-a"))),
    (
        "step",
        lambda s: s.record_step(
            T,
            pb.RecordStepRequest(
                request_id="r-b",
                session_id="s1",
                step_id="a",
                step_type="auth",
                status=res.STEP_STATUS_COMPLETED,
                logs=[pb.LogInput(message="m")],
            ),
        ),
    ),
    (
        "call",
        lambda s: s.record_llm_call(
            T,
            pb.RecordLlmCallRequest(
                request_id="r-c", session_id="s1", call_id="c1", input_tokens=4
            ),
        ),
    ),
    (
        "complete",
        lambda s: s.complete_session(
            T,
            pb.CompleteSessionRequest(
                request_id="r-d", session_id="s1", status=res.SESSION_STATUS_COMPLETED
            ),
        ),
    ),
]


@pytest.mark.parametrize("write", [w[1] for w in WRITES], ids=[w[0] for w in WRITES])
def test_fault_before_outbox_write_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, write: Any
) -> None:
    store.start_session(T, start())
    before = all_counts(store)
    before_session = store.get_session(T, "s1")
    monkeypatch.setattr(outbox, "insert_outbox_events", failing_insert)
    with pytest.raises(InjectedFault):
        write(store)
    assert all_counts(store) == before
    assert store.get_session(T, "s1") == before_session

    monkeypatch.undo()
    write(store)
    events = outbox_events(store)
    assert len(events) == 2
    assert sorted(e.sequence for e in events if e.session_id == "s1") in ([1], [1, 2])


def test_ingest_applies_everything_in_order(store: Store) -> None:
    batch = pb.IngestRequest(
        request_id="batch-1",
        operations=[
            pb.IngestOperation(start_session=start()),
            pb.IngestOperation(
                record_step=pb.RecordStepRequest(
                    session_id="s1",
                    step_id="p",
                    step_type="prompt-building",
                    status=res.STEP_STATUS_RUNNING,
                    logs=[pb.LogInput(message="a")],
                )
            ),
            pb.IngestOperation(
                record_step=pb.RecordStepRequest(
                    session_id="s1", step_id="p", status=res.STEP_STATUS_COMPLETED
                )
            ),
            pb.IngestOperation(
                record_llm_call=pb.RecordLlmCallRequest(
                    session_id="s1", call_id="c1", input_tokens=3
                )
            ),
            pb.IngestOperation(
                append_logs=pb.AppendLogsRequest(
                    request_id="inner-1",
                    session_id="s1",
                    logs=[pb.LogInput(message="b"), pb.LogInput(message="c")],
                )
            ),
            pb.IngestOperation(
                complete_session=pb.CompleteSessionRequest(
                    session_id="s1", status=res.SESSION_STATUS_COMPLETED
                )
            ),
        ],
    )
    response = store.ingest(T, batch)
    assert [
        (r.session_id, r.step_id, r.call_id, r.logs_appended) for r in response.results
    ] == [
        ("s1", "", "", 0),
        ("s1", "p", "", 1),
        ("s1", "p", "", 0),
        ("s1", "", "c1", 0),
        ("s1", "", "", 2),
        ("s1", "", "", 0),
    ]
    assert [(e.sequence, e.WhichOneof("payload")) for e in outbox_events(store)] == [
        (1, "session_started"),
        (2, "step_finished"),
        (3, "llm_call_recorded"),
        (4, "session_completed"),
    ]
    counts = all_counts(store)
    replayed = store.ingest(T, batch)
    assert replayed == response
    assert all_counts(store) == counts
    with pytest.raises(AlreadyExists):
        store.ingest(
            T,
            pb.IngestRequest(
                request_id="batch-1",
                operations=[pb.IngestOperation(start_session=start("s9"))],
            ),
        )
    assert all_counts(store) == counts
    # The inner request_id is honoured as in the single call.
    store.append_logs(
        T,
        pb.AppendLogsRequest(
            request_id="inner-1",
            session_id="s1",
            logs=[pb.LogInput(message="b"), pb.LogInput(message="c")],
        ),
    )
    assert all_counts(store) == counts


def test_ingest_is_all_or_nothing(store: Store) -> None:
    store.start_session(T, start())
    before = all_counts(store)
    with pytest.raises(InvalidArgument) as raised:
        store.ingest(
            T,
            pb.IngestRequest(
                operations=[
                    pb.IngestOperation(start_session=start("s2")),
                    pb.IngestOperation(
                        record_step=pb.RecordStepRequest(
                            session_id="s1",
                            step_id="a",
                            step_type="auth",
                            status=res.STEP_STATUS_COMPLETED,
                        )
                    ),
                    pb.IngestOperation(
                        append_logs=pb.AppendLogsRequest(
                            session_id="s1",
                            logs=[pb.LogInput(message="m", step_id="ghost")],
                        )
                    ),
                ]
            ),
        )
    assert [v.field for v in raised.value.violations] == [
        "operations[2].append_logs.logs[0].step_id"
    ]
    assert all_counts(store) == before
    with pytest.raises(NotFound, match=r"operations\[1\]"):
        store.ingest(
            T,
            pb.IngestRequest(
                operations=[
                    pb.IngestOperation(start_session=start("s3")),
                    pb.IngestOperation(
                        complete_session=pb.CompleteSessionRequest(
                            session_id="missing", status=res.SESSION_STATUS_ERROR
                        )
                    ),
                ]
            ),
        )
    assert all_counts(store) == before


def _in_threads(count: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as error:  # collected for the assertion
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_duplicates_have_one_effect(store: Store) -> None:
    store.start_session(T, start())
    request = pb.RecordLlmCallRequest(
        request_id="dup", session_id="s1", call_id="c-dup", input_tokens=7
    )
    results = _in_threads(8, lambda _i: store.record_llm_call(T, request))
    assert all(isinstance(r, pb.RecordLlmCallResponse) for r in results), results
    assert len({r.call.call_id for r in results}) == 1
    assert [e.sequence for e in outbox_events(store)] == [1, 2]
    assert store.get_session(T, "s1").transparency.api_call_count == 1


def test_concurrent_writers_of_one_session_keep_sequences(store: Store) -> None:
    store.start_session(T, start())

    def write(index: int) -> Any:
        store.record_step(
            T,
            pb.RecordStepRequest(
                session_id="s1",
                step_id=f"st{index}",
                step_type="x",
                status=res.STEP_STATUS_COMPLETED,
            ),
        )
        return store.record_llm_call(
            T, pb.RecordLlmCallRequest(session_id="s1", call_id=f"c{index}")
        )

    results = _in_threads(8, write)
    assert all(isinstance(r, pb.RecordLlmCallResponse) for r in results), results
    events = outbox_events(store)
    assert [e.sequence for e in events] == list(range(1, 18))
    assert store.get_coverage(T, "s1").total_events == 17
