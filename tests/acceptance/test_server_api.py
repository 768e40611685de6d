"""The API through the wire, against a real ``processflow serve`` process on
SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from tests.support.server import ServerProcess, health_status

SERVICE = "processflow.v1.ProcessFlowService"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def failure(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10, **kwargs)
    return raised.value


def bad_fields(error: grpc.RpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def test_health_and_reflection(served: ServerProcess) -> None:
    assert health_status(served.address) == "SERVING"
    assert health_status(served.address, SERVICE) == "SERVING"
    assert health_status(served.address, "no.such.Service") == "NOT_FOUND"
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_pipeline_lifecycle_reads_back(served: ServerProcess) -> None:
    stub = served.stub()
    session_id = new_id("life")
    stub.StartSession(
        pb.StartSessionRequest(
            session_id=session_id,
            user_id="ann",
            query="Top customers?",
            intent="ranking",
            tables_retrieved=["Customers", "Orders"],
        ),
        timeout=10,
    )
    for code, status in (
        ("auth", res.STEP_STATUS_COMPLETED),
        ("prompt-building", res.STEP_STATUS_RUNNING),
        ("prompt-assembly", res.STEP_STATUS_COMPLETED),
    ):
        stub.RecordStep(
            pb.RecordStepRequest(
                session_id=session_id,
                step_id=code,
                step_type=code,
                status=status,
                logs=[pb.LogInput(message=f"{code} done")],
            ),
            timeout=10,
        )
    call = stub.RecordLlmCall(
        pb.RecordLlmCallRequest(
            session_id=session_id,
            step_id="prompt-assembly",
            model="m1",
            input_tokens=40,
            output_tokens=10,
            cost_usd=0.002,
            temperature=0.3,
        ),
        timeout=10,
    )
    assert call.transparency.total_tokens == 50
    stub.AppendLogs(
        pb.AppendLogsRequest(
            session_id=session_id,
            logs=[pb.LogInput(message="late", level=res.LOG_LEVEL_ERROR)],
        ),
        timeout=10,
    )
    done = stub.CompleteSession(
        pb.CompleteSessionRequest(
            session_id=session_id,
            status=res.SESSION_STATUS_COMPLETED,
            generated_sql="SELECT 1",
            overall_confidence=0.75,
        ),
        timeout=10,
    )
    assert done.session.status == res.SESSION_STATUS_COMPLETED

    session = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    session = session.session
    assert [s.step_id for s in session.steps] == ["auth", "prompt-building"]
    assert [c.step_id for c in session.steps[1].children] == ["prompt-assembly"]
    assert session.steps[1].children[0].logs[0].message == "prompt-assembly done"
    assert [entry.message for entry in session.logs] == ["late"]
    assert session.llm_calls[0].call_id == call.call.call_id
    assert session.transparency.api_call_count == 1
    assert session.coverage.total_events == 5
    assert session.coverage.status == res.COVERAGE_STATUS_PENDING
    assert list(session.tables_retrieved) == ["Customers", "Orders"]


def test_validation_errors_name_every_field(served: ServerProcess) -> None:
    stub = served.stub()
    error = failure(stub.StartSession, pb.StartSessionRequest(session_id="bad id"))
    assert bad_fields(error) == ["session_id", "user_id", "query"]

    session_id = new_id("val")
    stub.StartSession(
        pb.StartSessionRequest(session_id=session_id, user_id="u", query="q"),
        timeout=10,
    )
    error = failure(
        stub.RecordStep,
        pb.RecordStepRequest(
            session_id=session_id,
            step_id="s",
            step_type="x",
            confidence=1.5,
            logs=[pb.LogInput(message="a"), pb.LogInput(message="b"), pb.LogInput()],
        ),
    )
    assert bad_fields(error) == ["confidence", "logs[2].message"]
    error = failure(
        stub.RecordLlmCall,
        pb.RecordLlmCallRequest(
            session_id=session_id, input_tokens=-1, cost_usd=-1, temperature=3
        ),
    )
    assert bad_fields(error) == ["input_tokens", "cost_usd", "temperature"]
    error = failure(
        stub.CompleteSession,
        pb.CompleteSessionRequest(
            session_id=session_id, status=res.SESSION_STATUS_RUNNING
        ),
    )
    assert bad_fields(error) == ["status"]
    error = failure(
        stub.AppendLogs,
        pb.AppendLogsRequest(
            session_id=session_id, logs=[pb.LogInput(message="m", step_id="ghost")]
        ),
    )
    assert bad_fields(error) == ["logs[0].step_id"]
    error = failure(
        stub.Ingest,
        pb.IngestRequest(
            operations=[
                pb.IngestOperation(
                    record_step=pb.RecordStepRequest(session_id=session_id)
                ),
            ]
        ),
    )
    assert bad_fields(error) == ["operations[0].record_step.step_id"]
    error = failure(stub.ListSessions, pb.ListSessionsRequest(page_token="garbage"))
    assert bad_fields(error) == ["page_token"]

    missing = failure(stub.GetSession, pb.GetSessionRequest(session_id="missing-1"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_idempotent_retries_over_the_wire(served: ServerProcess) -> None:
    stub = served.stub()
    request = pb.StartSessionRequest(request_id=new_id("req"), user_id="u", query="q")
    first = stub.StartSession(request, timeout=10)
    again = stub.StartSession(request, timeout=10)
    assert again == first
    changed = pb.StartSessionRequest(
        request_id=request.request_id, user_id="u", query="other"
    )
    error = failure(stub.StartSession, changed)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]

    session_id = first.session.session_id
    complete = pb.CompleteSessionRequest(
        session_id=session_id, status=res.SESSION_STATUS_CANCELLED
    )
    assert stub.CompleteSession(complete, timeout=10) == stub.CompleteSession(
        complete, timeout=10
    )
    error = failure(
        stub.CompleteSession,
        pb.CompleteSessionRequest(
            session_id=session_id, status=res.SESSION_STATUS_COMPLETED
        ),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    session = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    assert session.session.coverage.total_events == 2


def test_list_sessions_pages(served: ServerProcess) -> None:
    stub = served.stub()
    user = new_id("lister")
    ids = [new_id("page") for _ in range(5)]
    for session_id in ids:
        stub.StartSession(
            pb.StartSessionRequest(session_id=session_id, user_id=user, query="q"),
            timeout=10,
        )
    seen: list[str] = []
    request = pb.ListSessionsRequest(user_id=user, page_size=2)
    pages = 0
    while True:
        response = stub.ListSessions(request, timeout=10)
        pages += 1
        seen.extend(s.session_id for s in response.sessions)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert pages == 3
    assert seen == list(reversed(ids))


def test_watch_session_ends_on_completion(served: ServerProcess) -> None:
    stub = served.stub()
    session_id = new_id("watch")
    stub.StartSession(
        pb.StartSessionRequest(session_id=session_id, user_id="u", query="q"),
        timeout=10,
    )
    messages: list[pb.WatchSessionResponse] = []
    first_seen = threading.Event()

    def follow() -> None:
        for message in stub.WatchSession(
            pb.WatchSessionRequest(session_id=session_id), timeout=30
        ):
            messages.append(message)
            first_seen.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert first_seen.wait(15)
    stub.RecordStep(
        pb.RecordStepRequest(session_id=session_id, step_id="a", step_type="auth"),
        timeout=10,
    )
    stub.CompleteSession(
        pb.CompleteSessionRequest(
            session_id=session_id, status=res.SESSION_STATUS_COMPLETED
        ),
        timeout=10,
    )
    follower.join(30)
    assert not follower.is_alive()
    assert messages[0].change == "snapshot"
    assert messages[-1].change == "session_completed"
    assert messages[-1].session.status == res.SESSION_STATUS_COMPLETED
    assert [m.revision for m in messages] == list(range(1, len(messages) + 1))


def test_wait_for_coverage_times_out_without_relay(served: ServerProcess) -> None:
    stub = served.stub()
    session_id = new_id("cov")
    stub.StartSession(
        pb.StartSessionRequest(session_id=session_id, user_id="u", query="q"),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.WaitForCoverage(
            pb.WaitForCoverageRequest(session_id=session_id), timeout=1
        )
    code = raised.value.code()  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    unknown = failure(
        stub.WaitForCoverage, pb.WaitForCoverageRequest(session_id="nobody-here")
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
