"""Deadlines and retries of the client channel (service_config.json).

A small gRPC proxy sits between the client and the real server. It forwards
every call unchanged and can answer an attempt with UNAVAILABLE, either after
the server applied it (the answer is lost on the way back) or before. The
client's retry must re-send the same request_id, so the server applies the
call once: one row, one outbox event.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from processflow.client import (
    Tracker,
    TrackerError,
    channel_options,
    load_service_config,
)
from processflow.db import create_engine
from processflow.v1 import processflow_service_pb2 as api
from server import schema
from tests.support.server import InProcessServer, in_process_server

SERVICE = "/processflow.v1.ProcessFlowService/"
REQUEST_TYPES: dict[str, Any] = {
    "StartSession": api.StartSessionRequest,
    "RecordStep": api.RecordStepRequest,
    "AppendLogs": api.AppendLogsRequest,
    "RecordLlmCall": api.RecordLlmCallRequest,
    "CompleteSession": api.CompleteSessionRequest,
    "Ingest": api.IngestRequest,
    "GetSession": api.GetSessionRequest,
}


class FlakyProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Forwards unary calls to ``upstream``. For each request id of method m,
    the first ``fail_before[m]`` attempts are answered UNAVAILABLE without
    forwarding, the next ``fail_after[m]`` are applied upstream and then
    answered UNAVAILABLE. ``delay_seconds``: every call waits that long."""

    def __init__(self, upstream: str) -> None:
        self.channel = grpc.insecure_channel(upstream)
        self.fail_after: Counter[str] = Counter()
        self.fail_before: Counter[str] = Counter()
        self.delay_seconds = 0.0
        self.attempts: list[tuple[str, str, float]] = []  # method, request_id, time
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def attempts_of(self, method: str, request_id: str | None = None) -> list[str]:
        return [
            rid
            for m, rid, _ in self.attempts
            if m == method and request_id in (None, rid)
        ]

    def service(
        self, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = details.method.removeprefix(SERVICE)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            message = REQUEST_TYPES[method].FromString(request)
            request_id = getattr(message, "request_id", "")
            with self.lock:
                earlier = len(self.attempts_of(method, request_id))
                self.attempts.append((method, request_id, time.monotonic()))
            before = earlier < self.fail_before[method]
            after = (
                not before
                and earlier < self.fail_before[method] + self.fail_after[method]
            )
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            if before:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected before")
            forward = self.channel.unary_unary(SERVICE + method, None, None)
            try:
                answer: bytes = forward(request, timeout=10)
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")
            if after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected after apply")
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)

    def close(self) -> None:
        self.server.stop(0)
        self.channel.close()


@pytest.fixture
def server(database_url: str) -> Iterator[InProcessServer]:
    with in_process_server(database_url) as running:
        yield running


@pytest.fixture
def proxy(server: InProcessServer) -> Iterator[FlakyProxy]:
    flaky = FlakyProxy(server.address)
    yield flaky
    flaky.close()


@pytest.fixture
def sqlite_proxy(sqlite_url: str) -> Iterator[FlakyProxy]:
    """For tests of the channel alone, where the database engine is moot."""
    with in_process_server(sqlite_url) as running:
        flaky = FlakyProxy(running.address)
        yield flaky
        flaky.close()


def count_rows(url: str, table: sa.Table, **where: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(table)
            for column, value in where.items():
                query = query.where(table.c[column] == value)
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


def events_of(url: str, session_id: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(schema.outbox.c.event_type)
                .where(schema.outbox.c.session_id == session_id)
                .order_by(schema.outbox.c.sequence)
            )
            return [row.event_type for row in rows]
    finally:
        engine.dispose()


def test_a_retried_call_whose_answer_was_lost_has_one_effect(
    proxy: FlakyProxy, database_url: str
) -> None:
    # Every mutating call of this session loses its first answer (AppendLogs
    # its first two).
    for method in ("StartSession", "RecordStep", "RecordLlmCall", "CompleteSession"):
        proxy.fail_after[method] = 1
    proxy.fail_after["AppendLogs"] = 2

    with Tracker(proxy.target) as pf, pf.session(user_id="u1", query="q") as s:
        with s.step("ai-generation"):
            call = s.llm_call(model="gpt-4o", input_tokens=10, output_tokens=5)
        s.log("done")
        s.complete(generated_sql="SELECT 1")

    for method, tries in [
        ("StartSession", 2),
        ("RecordStep", 4),  # two calls (running, completed), each tried twice
        ("RecordLlmCall", 2),
        ("AppendLogs", 3),
        ("CompleteSession", 2),
    ]:
        ids = proxy.attempts_of(method)
        assert len(ids) == tries, (method, ids)
        assert len(set(ids)) == tries // 2 if method == "RecordStep" else 1
    assert count_rows(database_url, schema.sessions, session_id=s.session_id) == 1
    assert count_rows(database_url, schema.steps, session_id=s.session_id) == 1
    assert count_rows(database_url, schema.llm_calls, call_id=call.call_id) == 1
    assert count_rows(database_url, schema.logs, session_id=s.session_id) == 1
    assert events_of(database_url, s.session_id) == [
        "session_started",
        "llm_call_recorded",  # made inside the step, so before it finished
        "step_finished",
        "session_completed",
    ]
    session = pf_get(proxy.target, s.session_id)
    assert session.transparency.api_call_count == 1
    assert session.transparency.total_tokens == 15


def pf_get(target: str, session_id: str) -> Any:
    with Tracker(target) as pf:
        return pf.get_session(session_id)


def test_a_retried_ingest_batch_is_applied_once(
    proxy: FlakyProxy, database_url: str
) -> None:
    proxy.fail_after["Ingest"] = 1
    proxy.fail_before["Ingest"] = 1
    request = api.IngestRequest(
        request_id="batch-1",
        operations=[
            api.IngestOperation(
                start_session=api.StartSessionRequest(
                    session_id="ingested", user_id="u1", query="q"
                )
            ),
            api.IngestOperation(
                record_llm_call=api.RecordLlmCallRequest(
                    session_id="ingested", call_id="call-1", input_tokens=3
                )
            ),
        ],
    )
    with Tracker(proxy.target) as pf:
        response = pf.call("Ingest", request)

    assert [r.call_id for r in response.results] == ["", "call-1"]
    assert proxy.attempts_of("Ingest") == ["batch-1"] * 3
    assert count_rows(database_url, schema.sessions, session_id="ingested") == 1
    assert count_rows(database_url, schema.llm_calls, call_id="call-1") == 1
    assert events_of(database_url, "ingested") == [
        "session_started",
        "llm_call_recorded",
    ]


def test_unavailable_is_retried_a_bounded_number_of_times(
    sqlite_proxy: FlakyProxy,
) -> None:
    proxy = sqlite_proxy
    proxy.fail_before["GetSession"] = 100
    config = load_service_config()
    policy = config["methodConfig"][0]["retryPolicy"]

    started = time.monotonic()
    with Tracker(proxy.target) as pf, pytest.raises(TrackerError) as failed:
        pf.get_session("anything")
    elapsed = time.monotonic() - started

    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(proxy.attempts_of("GetSession")) == policy["maxAttempts"] == 5
    # Backoff: at most 0.1 + 0.2 + 0.4 + 0.8 s between the five attempts.
    times = [t for m, _, t in proxy.attempts if m == "GetSession"]
    assert times[-1] - times[0] <= 1.5 + 0.5
    assert elapsed < 5


def test_other_errors_are_not_retried(sqlite_proxy: FlakyProxy) -> None:
    proxy = sqlite_proxy
    with Tracker(proxy.target) as pf:
        with pytest.raises(TrackerError) as unknown:
            pf.get_session("no-such-session")
        with pytest.raises(TrackerError) as invalid:
            pf.call("StartSession", api.StartSessionRequest(query="q"))

    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(proxy.attempts_of("GetSession")) == 1
    assert len(proxy.attempts_of("StartSession")) == 1


def test_every_call_has_a_deadline(sqlite_proxy: FlakyProxy) -> None:
    proxy = sqlite_proxy
    proxy.delay_seconds = 3.0
    started = time.monotonic()
    with (
        Tracker(proxy.target, deadline_seconds=0.3) as pf,
        pytest.raises(TrackerError) as late,
    ):
        pf.get_session("slow")
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


def test_service_config_retries_only_unavailable_with_bounded_backoff() -> None:
    config = load_service_config()
    methods = {
        name["method"] for entry in config["methodConfig"] for name in entry["name"]
    }
    rpcs = set(api.DESCRIPTOR.services_by_name["ProcessFlowService"].methods_by_name)
    assert methods == rpcs
    for entry in config["methodConfig"]:
        policy = entry["retryPolicy"]
        assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= policy["maxAttempts"] <= 5
        assert policy["maxBackoff"] == "2s"
    unary, streaming = config["methodConfig"]
    assert unary["timeout"] == "5s"
    assert "timeout" not in streaming  # the caller's deadline bounds a watch

    shorter = load_service_config(1.5)
    assert shorter["methodConfig"][0]["timeout"] == "1.500s"
    assert load_service_config()["methodConfig"][0]["timeout"] == "5s"
    with pytest.raises(ValueError, match="deadline_seconds"):
        load_service_config(0)

    options = dict(channel_options(deadline_seconds=2))
    assert options["grpc.enable_retries"] == 1
    assert json.loads(options["grpc.service_config"]) == load_service_config(2)
