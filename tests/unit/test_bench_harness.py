"""The benchmark harness's pure parts: percentiles, the JSON contract, the
report, the stubbed store of bench.ceiling. The benchmarks themselves run
with `make bench`, outside the suite."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json

import pytest

from bench.load import run_paced
from bench.report import Machine, Report, UnaryLevel, render_markdown
from bench.stats import (
    EXTRA_JSON_KEYS,
    JSON_KEYS,
    Throughput,
    percentile,
    poll_delay,
    summary,
    target_met,
)
from bench.stub_store import stub_writes
from bench.workload import (
    CALLS_PER_SESSION,
    Call,
    SessionRun,
    ingest_calls,
    ingest_operation,
    session_runs,
)
from processflow.v1 import processflow_service_pb2 as pb
from server.store import Store

ISSUE_KEYS = {
    "unary_rps",
    "echo_rps",
    "unary_ratio",
    "unary_p99_ms",
    "ingest_eps",
    "copy_eps",
    "ingest_ratio",
    "relay_eps",
    "peer_queue_eps",
    "relay_ratio",
    "lag_p50_ms",
    "lag_p99_ms",
    "server_rss_mb",
    "relay_rss_mb",
}


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], 1.5)


def test_throughput_rate_and_latency() -> None:
    result = Throughput(count=300, seconds=2.0, latencies_ms=(1.0, 2.0, 3.0))
    assert result.rate == 150.0
    assert result.p50_ms == 2.0
    assert Throughput(0, 0.0).rate == 0.0
    assert Throughput(5, 1.0).p99_ms is None


def test_summary_has_exactly_the_issue_keys_and_derives_ratios() -> None:
    figures = summary(
        {
            "unary_rps": 1200.0,
            "echo_rps": 2000.0,
            "ingest_eps": 30_000.0,
            "copy_eps": 100_000.0,
            "relay_eps": 21_000.0,
            "peer_queue_eps": 300.0,
            "relay_separate_eps": 12_000.0,
        }
    )
    assert set(JSON_KEYS) == ISSUE_KEYS
    assert set(figures) == ISSUE_KEYS | set(EXTRA_JSON_KEYS)
    assert figures["unary_ratio"] == 0.6
    assert figures["ingest_ratio"] == 0.3
    assert figures["relay_ratio"] == 70.0
    assert figures["lag_p99_ms"] is None
    json.loads(json.dumps(figures))
    with pytest.raises(KeyError, match="not a benchmark figure"):
        summary({"unary_qps": 1.0})


def test_targets() -> None:
    assert target_met("unary_ratio", 0.6) is True
    assert target_met("unary_ratio", 0.59) is False
    assert target_met("lag_p99_ms", 100.0) is True
    assert target_met("lag_p99_ms", 101.0) is False
    assert target_met("echo_rps", 1.0) is None
    assert target_met("relay_eps", None) is None


def test_report_renders_tables_with_targets() -> None:
    figures = summary({"unary_rps": 1000.0, "echo_rps": 2000.0, "lag_p99_ms": 80.0})
    report = Report(
        mode="quick",
        date="2026-01-02 03:04 UTC",
        machine=Machine(2, "Test CPU", 4.0, "PostgreSQL 15"),
        figures=figures,
        levels=[UnaryLevel(16, 1000.0, 5.0, 12.5, 2000.0, 2.0, 4.0)],
        notes=["a note"],
    )
    text = render_markdown(report)
    assert "2026-01-02 03:04 UTC" in text
    assert "2 cores (Test CPU), 4.0 GiB memory, PostgreSQL 15" in text
    assert (
        "| Unary writes, concurrency 16 | 1,000 calls/s | grpc.aio echo | 2,000 "
        in text
    )
    assert "| 0.50 | unary_ratio ≥ 0.6 | **no** |" in text
    assert "| Coverage lag p99 at 1,000 events/s | 80.00 ms |" in text
    assert "| 16 | 1,000 | 5.00 | 12.50 | 2,000 | 2.00 | 4.00 | 0.50 |" in text
    assert "- a note" in text
    assert "n/a" in text


def test_workload_writes_one_event_per_call() -> None:
    run = SessionRun("t", 1, dt.datetime(2026, 1, 1))
    calls = run.calls()
    events = run.events(dt.datetime(2026, 1, 1))
    assert len(calls) == len(events) == CALLS_PER_SESSION
    assert [e.sequence for e in events] == list(range(1, CALLS_PER_SESSION + 1))
    assert calls[0].method == "StartSession"
    assert events[-1].WhichOneof("payload") == "session_completed"
    operation = ingest_operation(calls[0], keep_request_id=False)
    assert operation.start_session.session_id == "t-s1"
    assert operation.start_session.request_id == ""


def test_runs_as_one_ingest_request_carry_every_write() -> None:
    runs = iter([SessionRun("t", n, dt.datetime(2026, 1, 1)) for n in (2, 3, 4)])
    [call] = ingest_calls(runs, sessions=2)
    assert (call.method, call.events) == ("Ingest", 2 * CALLS_PER_SESSION)
    assert isinstance(call.request, pb.IngestRequest)
    kinds = [op.WhichOneof("operation") for op in call.request.operations]
    assert kinds.count("start_session") == kinds.count("complete_session") == 2
    sessions = [op.start_session.session_id for op in call.request.operations[::7]]
    assert sessions == ["t-s2", "t-s3"]
    assert call.request.request_id == "t-s2-ingest"
    assert next(runs).number == 4


def test_paced_load_schedules_events_not_calls() -> None:
    sent: list[Call] = []

    class Recorder:
        async def call(self, call: Call) -> None:
            sent.append(call)

    # 70 events in one second: five requests of two whole sessions each.
    result, problem = asyncio.run(
        run_paced(
            Recorder(),
            session_runs("t"),
            rate_per_second=70,
            duration_seconds=1.0,
            clients=3,
            calls_of=functools.partial(ingest_calls, sessions=2),
        )
    )
    assert (problem, result.errors) == ("", 0)
    assert [call.events for call in sent] == [2 * CALLS_PER_SESSION] * 5
    assert result.count == 70


def test_polls_are_spaced_by_what_they_cost() -> None:
    assert poll_delay(0.0) == pytest.approx(0.02)
    assert poll_delay(0.04) == pytest.approx(0.4)


def test_stubbed_store_answers_every_write_of_the_mix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    methods = {
        "StartSession": ("start_session", pb.StartSessionResponse),
        "RecordStep": ("record_step", pb.RecordStepResponse),
        "RecordLlmCall": ("record_llm_call", pb.RecordLlmCallResponse),
        "CompleteSession": ("complete_session", pb.CompleteSessionResponse),
    }
    for name, _ in methods.values():
        # Put back when the test ends.
        monkeypatch.setattr(Store, name, getattr(Store, name))
    stub_writes()
    store = Store.__new__(Store)  # no engine: a stubbed write must not need one
    for call in next(session_runs()).calls():
        name, response_type = methods[call.method]
        assert isinstance(getattr(store, name)("", call.request), response_type)
