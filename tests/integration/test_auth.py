"""Authentication, scopes and tenant isolation through a real in-process
server: every read and write path answers another tenant's session as if it
did not exist, and no key ever shows in a log line or an error."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from server.auth import hash_key
from tests.support.server import InProcessServer, in_process_server

KEYS = {
    "a-writer": ("pfk_A-writer-0123456789abcdef", "tenant-a", ["write", "read"]),
    "a-reader": ("pfk_A-reader-0123456789abcdef", "tenant-a", ["read"]),
    "b-writer": ("pfk_B-writer-0123456789abcdef", "tenant-b", ["write", "read"]),
    "a-admin": ("pfk_A-admin-0123456789abcdef", "tenant-a", ["read", "admin"]),
}
ALL_SECRETS = [secret for secret, _, _ in KEYS.values()]


def keys_file(path: Path, names: list[str] | None = None) -> Path:
    lines = []
    for key_id in names or list(KEYS):
        secret, tenant, scopes = KEYS[key_id]
        entry = {
            "key_id": key_id,
            "sha256": hash_key(secret),
            "tenant": tenant,
            "scopes": scopes,
        }
        lines.append(json.dumps(entry))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[InProcessServer]:
    path = keys_file(tmp_path / "keys.jsonl")
    with in_process_server(
        sqlite_url, api_keys_file=str(path), api_keys_reload_seconds=0.0
    ) as running:
        yield running


class Caller:
    def __init__(self, address: str, secret: str | None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ProcessFlowServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {secret}"),) if secret else ()

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)

    def code(self, method: str, request: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as raised:
            result = self(method, request)
            if method == "WatchSession":
                list(result)
        return raised.value.code()  # type: ignore[attr-defined, no-any-return]

    def error(self, method: str, request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raised:
            self(method, request)
        return raised.value


def as_key(server: InProcessServer, key_id: str) -> Caller:
    return Caller(server.address, KEYS[key_id][0])


def start(caller: Caller, session_id: str, **fields: Any) -> res.Session:
    request = pb.StartSessionRequest(session_id=session_id, user_id="u", query="q?")
    for name, value in fields.items():
        setattr(request, name, value)
    return caller("StartSession", request).session  # type: ignore[no-any-return]


def new_id() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def test_calls_without_a_valid_key_are_unauthenticated(server: InProcessServer) -> None:
    request = pb.GetSessionRequest(session_id="x")
    assert Caller(server.address, None).code("GetSession", request) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    wrong = Caller(server.address, KEYS["a-writer"][0] + "x")
    assert wrong.code("GetSession", request) == grpc.StatusCode.UNAUTHENTICATED
    for header in ("Basic abc", "Bearer", KEYS["a-writer"][0]):
        caller = Caller(server.address, None)
        caller.metadata = (("authorization", header),)
        assert caller.code("GetSession", request) == grpc.StatusCode.UNAUTHENTICATED
    stream = Caller(server.address, None)
    watch = pb.WatchSessionRequest(session_id="x")
    assert stream.code("WatchSession", watch) == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(server: InProcessServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        assert response.list_services_response.service


def test_each_method_needs_its_scope(server: InProcessServer) -> None:
    reader = as_key(server, "a-reader")
    writer = as_key(server, "a-writer")
    session_id = new_id()
    start(writer, session_id)
    denied = reader.code("StartSession", pb.StartSessionRequest(user_id="u", query="q"))
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    ingest = pb.IngestRequest(
        operations=[
            pb.IngestOperation(
                append_logs=pb.AppendLogsRequest(
                    session_id=session_id, logs=[pb.LogInput(message="m")]
                )
            )
        ]
    )
    assert reader.code("Ingest", ingest) == grpc.StatusCode.PERMISSION_DENIED
    assert reader("GetSession", pb.GetSessionRequest(session_id=session_id))
    admin = as_key(server, "a-admin")
    assert (
        admin.code(
            "CompleteSession",
            pb.CompleteSessionRequest(
                session_id=session_id, status=res.SESSION_STATUS_COMPLETED
            ),
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_another_tenants_session_does_not_exist_for_any_path(
    server: InProcessServer,
) -> None:
    owner, other = as_key(server, "a-writer"), as_key(server, "b-writer")
    session_id = new_id()
    start(owner, session_id)
    owner(
        "RecordStep",
        pb.RecordStepRequest(session_id=session_id, step_id="st", step_type="auth"),
    )
    missing = new_id()

    def answers(session: str) -> list[tuple[grpc.StatusCode, str]]:
        calls: list[tuple[str, Any]] = [
            ("GetSession", pb.GetSessionRequest(session_id=session)),
            ("WatchSession", pb.WatchSessionRequest(session_id=session)),
            ("WaitForCoverage", pb.WaitForCoverageRequest(session_id=session)),
            (
                "RecordStep",
                pb.RecordStepRequest(
                    session_id=session, step_id="st", step_type="auth"
                ),
            ),
            (
                "AppendLogs",
                pb.AppendLogsRequest(
                    session_id=session, logs=[pb.LogInput(message="m")]
                ),
            ),
            ("RecordLlmCall", pb.RecordLlmCallRequest(session_id=session)),
            (
                "CompleteSession",
                pb.CompleteSessionRequest(
                    session_id=session, status=res.SESSION_STATUS_COMPLETED
                ),
            ),
            (
                "Ingest",
                pb.IngestRequest(
                    operations=[
                        pb.IngestOperation(
                            record_step=pb.RecordStepRequest(
                                session_id=session, step_id="st", step_type="auth"
                            )
                        )
                    ]
                ),
            ),
        ]
        found = []
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as raised:
                result = other(method, request)
                if method == "WatchSession":
                    list(result)
            error = raised.value
            found.append(
                (error.code(), error.details().replace(session, "<id>"))  # type: ignore[attr-defined]
            )
        return found

    # Someone else's session answers exactly as one that was never written.
    foreign = answers(session_id)
    assert foreign == answers(missing)
    assert {code for code, _ in foreign} == {grpc.StatusCode.NOT_FOUND}
    assert not other("ListSessions", pb.ListSessionsRequest()).sessions
    listed = owner("ListSessions", pb.ListSessionsRequest()).sessions
    assert [s.session_id for s in listed] == [session_id]
    # Nothing the other tenant tried changed the owner's session.
    stored = owner("GetSession", pb.GetSessionRequest(session_id=session_id)).session
    assert [s.step_id for s in stored.steps] == ["st"]
    assert not stored.logs and not stored.llm_calls
    assert stored.status == res.SESSION_STATUS_RUNNING


def test_request_ids_and_page_tokens_are_per_tenant(server: InProcessServer) -> None:
    a, b = as_key(server, "a-writer"), as_key(server, "b-writer")
    first = a(
        "StartSession",
        pb.StartSessionRequest(request_id="same", user_id="u", query="from a"),
    ).session
    second = b(
        "StartSession",
        pb.StartSessionRequest(request_id="same", user_id="u", query="from b"),
    ).session
    assert first.session_id != second.session_id
    for _ in range(2):
        start(a, new_id())
    page = a("ListSessions", pb.ListSessionsRequest(page_size=1))
    assert page.next_page_token
    reuse = b.error(
        "ListSessions",
        pb.ListSessionsRequest(page_size=1, page_token=page.next_page_token),
    )
    assert reuse.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_client_ids_taken_by_another_tenant_conflict_without_content(
    server: InProcessServer,
) -> None:
    a, b = as_key(server, "a-writer"), as_key(server, "b-writer")
    session_id = new_id()
    start(a, session_id, query="secret question")
    clash = b.error(
        "StartSession",
        pb.StartSessionRequest(
            session_id=session_id, user_id="u", query="secret question"
        ),
    )
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    assert "secret question" not in clash.details()  # type: ignore[attr-defined]
    mine = new_id()
    start(b, mine)
    a("RecordLlmCall", pb.RecordLlmCallRequest(session_id=session_id, call_id="c-1"))
    taken = b.error(
        "RecordLlmCall", pb.RecordLlmCallRequest(session_id=mine, call_id="c-1")
    )
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    assert session_id not in taken.details()  # type: ignore[attr-defined]


def test_analytics_are_per_tenant_and_across_tenants_need_admin(
    server: InProcessServer,
) -> None:
    a, b = as_key(server, "a-writer"), as_key(server, "b-writer")
    for caller, count in ((a, 2), (b, 3)):
        for _ in range(count):
            start(caller, new_id())
    assert a("GetSuccessSummary", pb.GetSuccessSummaryRequest()).total_sessions == 2
    assert b("GetSuccessSummary", pb.GetSuccessSummaryRequest()).total_sessions == 3
    for tenant in ("*", "tenant-b"):
        request = pb.GetSuccessSummaryRequest(tenant_id=tenant)
        assert a.code("GetSuccessSummary", request) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    admin = as_key(server, "a-admin")
    every = admin("GetSuccessSummary", pb.GetSuccessSummaryRequest(tenant_id="*"))
    assert every.total_sessions == 5
    only_b = admin(
        "GetSuccessSummary", pb.GetSuccessSummaryRequest(tenant_id="tenant-b")
    )
    assert only_b.total_sessions == 3
    usage = admin("GetUsageSummary", pb.GetUsageSummaryRequest(tenant_id="*"))
    assert usage.total.requests == 0
    steps = admin("GetStepPerformance", pb.GetStepPerformanceRequest(tenant_id="*"))
    assert not steps.rows
    bad = admin.error("GetUsageSummary", pb.GetUsageSummaryRequest(tenant_id="a b"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_a_changed_keys_file_takes_effect(sqlite_url: str, tmp_path: Path) -> None:
    path = keys_file(tmp_path / "keys.jsonl", ["a-writer"])
    with in_process_server(
        sqlite_url, api_keys_file=str(path), api_keys_reload_seconds=0.0
    ) as running:
        request = pb.ListSessionsRequest()
        b = as_key(running, "b-writer")
        assert b.code("ListSessions", request) == grpc.StatusCode.UNAUTHENTICATED
        keys_file(path, ["b-writer"])
        assert b("ListSessions", request) is not None
        a = as_key(running, "a-writer")
        assert a.code("ListSessions", request) == grpc.StatusCode.UNAUTHENTICATED


def test_no_key_in_any_log_line_or_error(
    server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    details: list[str] = []
    a = as_key(server, "a-writer")
    session_id = new_id()
    start(a, session_id)
    for secret in [*ALL_SECRETS, ALL_SECRETS[0][:-1], ALL_SECRETS[0] + "0"]:
        caller = Caller(server.address, secret)
        for method, request in (
            ("GetSession", pb.GetSessionRequest(session_id=session_id)),
            ("StartSession", pb.StartSessionRequest(user_id="", query="")),
            ("GetUsageSummary", pb.GetUsageSummaryRequest(tenant_id="*")),
        ):
            try:
                caller(method, request)
            except grpc.RpcError as error:
                details.append(str(error.details()))  # type: ignore[attr-defined]
                details.append(repr(error.trailing_metadata()))  # type: ignore[attr-defined]
    assert len(details) >= 10
    logged = "\n".join(
        f"{record.getMessage()} {record.__dict__}" for record in caplog.records
    )
    assert "rpc_finished" in logged
    for secret in ALL_SECRETS:
        fragment = secret[len("pfk_") :]
        assert fragment not in logged
        assert all(fragment not in text for text in details)
