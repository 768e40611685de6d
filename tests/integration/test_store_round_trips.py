"""The write path's cost in statements and round trips stays bounded: a fixed
small number per call, and for Ingest a number that does not grow with the
operations. A change that adds a round trip to a hot path fails here."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.store import Store
from tests.integration.store_helpers import T

# Statements per call on either database (without BEGIN and COMMIT), and
# round trips on PostgreSQL: the BEGIN with the statements whose answers the
# call reads (the lock and the read after it in one), then one pipeline with
# the deferred writes and the COMMIT.
STATEMENTS = {
    "StartSession": 3,
    "RecordStep": 5,
    "RecordLlmCall": 5,
    # One more: the roll-up, read after the lock (see sessions.py).
    "CompleteSession": 5,
    "AppendLogs": 4,
}
ROUND_TRIPS = {
    "StartSession": 2,
    "RecordStep": 2,
    # The call's INSERT and the roll-up's upsert each wait for an answer.
    "RecordLlmCall": 4,
    "CompleteSession": 2,
    # One more: the SELECT of the steps its lines name.
    "AppendLogs": 4,
}
# psycopg prepares a statement at its fifth use, with one more round trip.
WARM_UP_SESSIONS = 6
INGEST_STATEMENTS = 12
INGEST_ROUND_TRIPS = 16


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=1_800_000_000 + seconds)


def session_calls(number: int, *, request_ids: bool = True) -> list[tuple[str, Any]]:
    """One pipeline run as the benchmark sends it, plus a log call: 7 calls."""
    sid = f"s{number}"

    def rid(index: int) -> str:
        return f"{sid}-r{index}" if request_ids else ""

    calls: list[tuple[str, Any]] = [
        (
            "StartSession",
            pb.StartSessionRequest(
                request_id=rid(0),
                session_id=sid,
                user_id="alice",
                query="How many?",
                intent="count",
                tables_retrieved=["orders"],
                start_time=ts(0),
            ),
        )
    ]
    for index, (code, parent) in enumerate(
        [
            ("auth", ""),
            ("prompt-building", ""),
            ("context-gathering", "prompt-building"),
        ],
        start=1,
    ):
        calls.append(
            (
                "RecordStep",
                pb.RecordStepRequest(
                    request_id=rid(index),
                    session_id=sid,
                    step_id=f"{sid}-{code}",
                    step_type=code,
                    parent_step_id=f"{sid}-{parent}" if parent else "",
                    status=res.STEP_STATUS_COMPLETED,
                    start_time=ts(index),
                    end_time=ts(index + 1),
                    confidence=0.9,
                ),
            )
        )
    calls += [
        (
            "AppendLogs",
            pb.AppendLogsRequest(
                request_id=rid(7),
                session_id=sid,
                logs=[pb.LogInput(message="m", step_id=f"{sid}-auth")],
            ),
        ),
        (
            "RecordLlmCall",
            pb.RecordLlmCallRequest(
                request_id=rid(8),
                session_id=sid,
                step_id=f"{sid}-prompt-building",
                call_id=f"{sid}-c1",
                model="m",
                input_tokens=10,
                output_tokens=2,
                cost_usd=0.001,
            ),
        ),
        (
            "CompleteSession",
            pb.CompleteSessionRequest(
                request_id=rid(9),
                session_id=sid,
                status=res.SESSION_STATUS_COMPLETED,
                end_time=ts(20),
            ),
        ),
    ]
    return calls


def call(store: Store, method: str, request: Any) -> None:
    functions: dict[str, Callable[[str, Any], Any]] = {
        "StartSession": store.start_session,
        "RecordStep": store.record_step,
        "AppendLogs": store.append_logs,
        "RecordLlmCall": store.record_llm_call,
        "CompleteSession": store.complete_session,
    }
    functions[method](T, request)


def ingest_request(first: int, sessions: int) -> pb.IngestRequest:
    operations = []
    fields = {
        "StartSession": "start_session",
        "RecordStep": "record_step",
        "AppendLogs": "append_logs",
        "RecordLlmCall": "record_llm_call",
        "CompleteSession": "complete_session",
    }
    for number in range(first, first + sessions):
        for method, request in session_calls(number, request_ids=False):
            operation = pb.IngestOperation()
            getattr(operation, fields[method]).CopyFrom(request)
            operations.append(operation)
    return pb.IngestRequest(request_id=f"batch-{first}", operations=operations)


class StatementCounter:
    """Statements SQLAlchemy runs (on SQLite every statement goes through it;
    on PostgreSQL the write path runs most on psycopg, see TraceCounter)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._counted)

    def _counted(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # SQLite's BEGIN IMMEDIATE (processflow.db) is PostgreSQL's implicit BEGIN.
        if statement != "BEGIN IMMEDIATE":
            self.count += 1

    def during(self, work: Callable[[], object]) -> int:
        self.count = 0
        work()
        return self.count


class TraceCounter:
    """Reads the libpq trace of every connection the store checks out:
    round trips are the server's ReadyForQuery messages, statements the
    client's Execute and Query messages (the BEGIN and COMMIT of each
    transaction among them)."""

    def __init__(self, engine: sa.Engine, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        sa.event.listen(engine, "checkout", self._trace)
        sa.event.listen(engine, "checkin", self._untrace)

    def _trace(self, dbapi_connection: Any, *_args: Any) -> None:
        dbapi_connection.pgconn.trace(self.fd)
        dbapi_connection.pgconn.set_trace_flags(0)

    def _untrace(self, dbapi_connection: Any, *_args: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.pgconn.untrace()

    def during(self, work: Callable[[], object]) -> tuple[int, int]:
        """Round trips and statements (without BEGIN and COMMIT) of ``work``,
        a single transaction."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        work()
        lines = self.path.read_text().splitlines()
        round_trips = sum(
            1 for line in lines if "\tB\t" in line and "ReadyForQuery" in line
        )
        statements = sum(
            1
            for line in lines
            if "\tF\t" in line and ("\tExecute" in line or "\tQuery" in line)
        )
        return round_trips, statements - 2

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """Statements counted by SQLAlchemy's events: every one on SQLite. On
    PostgreSQL most run on psycopg, and the trace counts them (below)."""
    store = Store.connect(sqlite_url, pool_size=2)
    yield store
    store.close()


def test_statements_per_call_are_bounded(sqlite_store: Store) -> None:
    store = sqlite_store
    counter = StatementCounter(store.engine)
    for number in range(WARM_UP_SESSIONS):
        for method, request in session_calls(number):
            call(store, method, request)
    seen: dict[str, int] = {}
    for method, request in session_calls(WARM_UP_SESSIONS):
        count = counter.during(functools.partial(call, store, method, request))
        seen[method] = max(seen.get(method, 0), count)
    assert set(seen) == set(STATEMENTS)
    over = {m: (n, STATEMENTS[m]) for m, n in seen.items() if n > STATEMENTS[m]}
    assert not over, f"statements (seen, allowed): {over}"


def test_ingest_statements_do_not_grow_with_operations(sqlite_store: Store) -> None:
    store = sqlite_store
    counter = StatementCounter(store.engine)
    small = counter.during(lambda: store.ingest(T, ingest_request(0, 2)))
    large = counter.during(lambda: store.ingest(T, ingest_request(100, 60)))
    assert len(ingest_request(100, 60).operations) == 420
    assert large <= INGEST_STATEMENTS, large
    assert large <= small + 2, (small, large)


def test_round_trips_and_statements_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    store = Store.connect(pg_url, pool_size=2)
    counter = TraceCounter(store.engine, tmp_path / "libpq-trace.txt")
    try:
        for number in range(WARM_UP_SESSIONS):
            for method, request in session_calls(number):
                call(store, method, request)
        trips: dict[str, int] = {}
        statements: dict[str, int] = {}
        for method, request in session_calls(WARM_UP_SESSIONS):
            seen = counter.during(functools.partial(call, store, method, request))
            trips[method] = max(trips.get(method, 0), seen[0])
            statements[method] = max(statements.get(method, 0), seen[1])
        over = {m: (n, ROUND_TRIPS[m]) for m, n in trips.items() if n > ROUND_TRIPS[m]}
        assert not over, f"round trips (seen, allowed): {over}"
        over = {
            m: (n, STATEMENTS[m]) for m, n in statements.items() if n > STATEMENTS[m]
        }
        assert not over, f"statements (seen, allowed): {over}"

        small, _ = counter.during(lambda: store.ingest(T, ingest_request(200, 2)))
        large, _ = counter.during(lambda: store.ingest(T, ingest_request(300, 60)))
        assert large <= INGEST_ROUND_TRIPS, large
        assert large <= small + 2, (small, large)
    finally:
        counter.close()
        store.close()
