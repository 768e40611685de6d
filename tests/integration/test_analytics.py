"""The analytics RPCs, through a real server, against figures the test
computes itself from what it wrote."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from server.store import Store
from tests.integration.coverage_data import BASE, stamp
from tests.support.server import in_process_server

STATUSES = [
    res.SESSION_STATUS_COMPLETED,
    res.SESSION_STATUS_ERROR,
    res.SESSION_STATUS_COMPLETED,
    res.SESSION_STATUS_CANCELLED,
    None,  # still running
    res.SESSION_STATUS_COMPLETED,
]


@dataclass(frozen=True)
class Call:
    user: str
    day: dt.date
    model: str
    query_type: str
    input_tokens: int
    output_tokens: int
    cost: float


@dataclass(frozen=True)
class Written:
    calls: list[Call]
    sessions: list[tuple[str, str, dt.datetime, int | None, float | None, float | None]]
    steps: list[tuple[str, dt.datetime, int, float, str]]


def write_figures(store: Store) -> Written:
    calls: list[Call] = []
    sessions = []
    steps = []
    for i, status in enumerate(STATUSES):
        user = ("ann", "bob")[i % 2]
        query_type = ("enhanced", "simple")[i % 3 == 0]
        start = BASE + dt.timedelta(days=i % 3, hours=i)
        session_id = f"a{i}"
        store.start_session(
            "",
            pb.StartSessionRequest(
                session_id=session_id,
                user_id=user,
                query="q",
                query_type=query_type,
                start_time=stamp(start),
            ),
        )
        for k, (code, status_code) in enumerate(
            (
                ("auth", res.STEP_STATUS_COMPLETED),
                (
                    "sql-execution",
                    res.STEP_STATUS_ERROR if i % 2 else res.STEP_STATUS_COMPLETED,
                ),
            )
        ):
            duration = 100 * (i + 1) + k
            confidence = 0.5 + 0.05 * i
            store.record_step(
                "",
                pb.RecordStepRequest(
                    session_id=session_id,
                    step_id=code,
                    step_type=code,
                    status=status_code,
                    start_time=stamp(start),
                    end_time=stamp(start + dt.timedelta(milliseconds=duration)),
                    confidence=confidence,
                ),
            )
            words = {
                res.STEP_STATUS_COMPLETED: "completed",
                res.STEP_STATUS_ERROR: "error",
            }
            steps.append((code, start, duration, confidence, words[status_code]))
        for k in range(2):
            call = Call(
                user,
                start.date(),
                ("gpt-4o", "claude")[k],
                query_type,
                10 * (i + 1) + k,
                5 * (k + 1),
                0.001 * (i + 1) + 0.0001 * k,
            )
            store.record_llm_call(
                "",
                pb.RecordLlmCallRequest(
                    session_id=session_id,
                    call_id=f"{session_id}-{k}",
                    model=call.model,
                    input_tokens=call.input_tokens,
                    output_tokens=call.output_tokens,
                    cost_usd=call.cost,
                    call_time=stamp(start + dt.timedelta(minutes=k)),
                ),
            )
            calls.append(call)
        duration_ms = None
        confidence_value = None
        if status is not None:
            duration_ms = 1000 * (i + 1)
            confidence_value = 0.6 + 0.05 * i
            store.complete_session(
                "",
                pb.CompleteSessionRequest(
                    session_id=session_id,
                    status=status,
                    overall_confidence=confidence_value,
                    end_time=stamp(start + dt.timedelta(milliseconds=duration_ms)),
                ),
            )
        words = {
            None: "running",
            res.SESSION_STATUS_COMPLETED: "completed",
            res.SESSION_STATUS_ERROR: "error",
            res.SESSION_STATUS_CANCELLED: "cancelled",
        }
        sessions.append(
            (user, query_type, start, duration_ms, confidence_value, words[status])
        )  # type: ignore[arg-type]
    return Written(calls, sessions, steps)  # type: ignore[arg-type]


@pytest.fixture
def served(
    database_url: str,
) -> Iterator[tuple[pb_grpc.ProcessFlowServiceStub, Written]]:
    store = Store.connect(database_url)
    try:
        written = write_figures(store)
    finally:
        store.close()
    with (
        in_process_server(database_url) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.ProcessFlowServiceStub(channel), written


def expected_usage(
    calls: list[Call], key: str
) -> dict[str, tuple[int, int, int, int, float]]:
    groups: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        name = {
            "day": call.day.isoformat(),
            "user": call.user,
            "model": call.model,
            "query_type": call.query_type,
        }[key]
        groups[name].append(call)
    return {
        name: (
            len(group),
            sum(c.input_tokens for c in group),
            sum(c.output_tokens for c in group),
            sum(c.input_tokens + c.output_tokens for c in group),
            sum(c.cost for c in group),
        )
        for name, group in groups.items()
    }


def figures(rows: object) -> dict[str, tuple[int, int, int, int, float]]:
    return {
        r.key: (
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.total_tokens,
            round(r.cost_usd, 8),
        )  # type: ignore[attr-defined]
        for r in rows  # type: ignore[attr-defined]
    }


def rounded(
    table: dict[str, tuple[int, int, int, int, float]],
) -> dict[str, tuple[int, int, int, int, float]]:
    return {k: (*v[:4], round(v[4], 8)) for k, v in table.items()}


@pytest.mark.parametrize(
    ("grouping", "key"),
    [
        (pb.USAGE_GROUPING_UNSPECIFIED, "day"),
        (pb.USAGE_GROUPING_DAY, "day"),
        (pb.USAGE_GROUPING_USER, "user"),
        (pb.USAGE_GROUPING_MODEL, "model"),
        (pb.USAGE_GROUPING_QUERY_TYPE, "query_type"),
    ],
)
def test_usage_summary_groups(
    served: tuple[pb_grpc.ProcessFlowServiceStub, Written], grouping: int, key: str
) -> None:
    stub, written = served
    response = stub.GetUsageSummary(pb.GetUsageSummaryRequest(group_by=grouping))  # type: ignore[arg-type]
    expected = rounded(expected_usage(written.calls, key))
    assert [r.key for r in response.rows] == sorted(expected)
    assert figures(response.rows) == expected
    total = response.total
    assert total.requests == len(written.calls)
    assert total.total_tokens == sum(
        c.input_tokens + c.output_tokens for c in written.calls
    )
    assert total.average_tokens_per_request == pytest.approx(
        total.total_tokens / total.requests
    )
    assert total.cost_usd == pytest.approx(sum(c.cost for c in written.calls))


def test_usage_summary_filters_by_user_and_time(
    served: tuple[pb_grpc.ProcessFlowServiceStub, Written],
) -> None:
    stub, written = served
    start = BASE + dt.timedelta(days=1)
    end = BASE + dt.timedelta(days=2)
    request = pb.GetUsageSummaryRequest(
        group_by=pb.USAGE_GROUPING_MODEL,
        user_id="bob",
        start_time=stamp(start),
        end_time=stamp(end),
    )
    chosen = [c for c in written.calls if c.user == "bob" and c.day == start.date()]
    assert chosen
    assert figures(stub.GetUsageSummary(request).rows) == rounded(
        expected_usage(chosen, "model")
    )


def test_success_summary(
    served: tuple[pb_grpc.ProcessFlowServiceStub, Written],
) -> None:
    stub, written = served
    for user in ("", "ann"):
        chosen = [s for s in written.sessions if not user or s[0] == user]
        finished = [s for s in chosen if s[5] != "running"]
        response = stub.GetSuccessSummary(pb.GetSuccessSummaryRequest(user_id=user))
        assert response.total_sessions == len(chosen)
        assert response.completed_sessions == sum(s[5] == "completed" for s in chosen)
        assert response.error_sessions == sum(s[5] == "error" for s in chosen)
        assert response.cancelled_sessions == sum(s[5] == "cancelled" for s in chosen)
        assert response.running_sessions == sum(s[5] == "running" for s in chosen)
        assert response.success_rate == pytest.approx(
            sum(s[5] == "completed" for s in finished) / len(finished)
        )
        assert response.error_rate == pytest.approx(
            sum(s[5] == "error" for s in finished) / len(finished)
        )
        assert response.average_duration_ms == pytest.approx(
            sum(s[3] for s in finished) / len(finished)  # type: ignore[misc]
        )
        assert response.average_confidence == pytest.approx(
            sum(s[4] for s in finished) / len(finished),
            abs=1e-4,  # type: ignore[misc]
        )

    empty = stub.GetSuccessSummary(pb.GetSuccessSummaryRequest(query_type="none-such"))
    assert empty.total_sessions == 0 and empty.success_rate == 0.0
    assert not empty.HasField("average_confidence")


def test_step_performance_with_time_filter(
    served: tuple[pb_grpc.ProcessFlowServiceStub, Written],
) -> None:
    stub, written = served
    start = BASE + dt.timedelta(days=1)
    request = pb.GetStepPerformanceRequest(start_time=stamp(start))
    rows = {r.step_type: r for r in stub.GetStepPerformance(request).rows}
    assert sorted(rows) == ["auth", "sql-execution"]
    for code, row in rows.items():
        chosen = [s for s in written.steps if s[0] == code and s[1] >= start]
        durations = [s[2] for s in chosen]
        assert row.executions == len(chosen)
        assert row.average_duration_ms == pytest.approx(sum(durations) / len(durations))
        assert (row.min_duration_ms, row.max_duration_ms) == (
            min(durations),
            max(durations),
        )
        assert row.average_confidence == pytest.approx(
            sum(s[3] for s in chosen) / len(chosen), abs=1e-4
        )
        successes = sum(s[4] == "completed" for s in chosen)
        assert row.success_count == successes
        assert row.error_count == sum(s[4] == "error" for s in chosen)
        assert row.success_rate_percent == pytest.approx(100 * successes / len(chosen))

    only = stub.GetStepPerformance(pb.GetStepPerformanceRequest(step_type="auth"))
    assert [r.step_type for r in only.rows] == ["auth"]


def bad_fields(call: object, request: object) -> list[str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)  # type: ignore[operator]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    return [v.field for v in detail.field_violations]


def test_invalid_requests_name_the_field(
    served: tuple[pb_grpc.ProcessFlowServiceStub, Written],
) -> None:
    stub, _ = served
    backwards = {
        "start_time": stamp(BASE + dt.timedelta(days=1)),
        "end_time": stamp(BASE),
    }
    assert bad_fields(stub.GetUsageSummary, pb.GetUsageSummaryRequest(**backwards)) == [
        "end_time"
    ]
    assert bad_fields(
        stub.GetSuccessSummary, pb.GetSuccessSummaryRequest(**backwards)
    ) == ["end_time"]
    assert bad_fields(
        stub.GetStepPerformance, pb.GetStepPerformanceRequest(**backwards)
    ) == ["end_time"]
    assert bad_fields(stub.GetUsageSummary, pb.GetUsageSummaryRequest(group_by=99)) == [
        "group_by"
    ]  # type: ignore[arg-type]
    assert bad_fields(
        stub.GetStepPerformance, pb.GetStepPerformanceRequest(step_type="x" * 65)
    ) == ["step_type"]
