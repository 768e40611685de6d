"""Every limit, set low, refused with the right code through a real server:
sizes and counts with INVALID_ARGUMENT naming the field, steps per session
and overload with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from tests.support.polling import wait_for
from tests.support.server import InProcessServer, in_process_server

LIMITS = {
    "max_receive_message_bytes": 64 * 1024,
    "max_text_chars": 100,
    "max_logs_per_call": 3,
    "max_ingest_operations": 2,
    "max_steps_per_session": 2,
    "max_concurrent_rpcs": 2,
}


@pytest.fixture
def server(sqlite_url: str) -> Iterator[InProcessServer]:
    with in_process_server(sqlite_url, **LIMITS) as running:
        yield running


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[pb_grpc.ProcessFlowServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.ProcessFlowServiceStub(channel)


def refused(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value


def bad_fields(error: grpc.RpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def new_session(stub: pb_grpc.ProcessFlowServiceStub) -> str:
    session_id = f"s-{uuid.uuid4().hex[:10]}"
    stub.StartSession(
        pb.StartSessionRequest(session_id=session_id, user_id="u", query="q"),
        timeout=10,
    )
    return session_id


def test_a_message_over_the_receive_limit_is_refused(
    stub: pb_grpc.ProcessFlowServiceStub,
) -> None:
    request = pb.StartSessionRequest(user_id="u", query="q" * (70 * 1024))
    error = refused(stub.StartSession, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_text_fields_are_bounded_and_named(
    stub: pb_grpc.ProcessFlowServiceStub,
) -> None:
    assert bad_fields(
        refused(stub.StartSession, pb.StartSessionRequest(user_id="u" * 257, query="q"))
    ) == ["user_id"]
    session_id = new_session(stub)
    step = pb.RecordStepRequest(
        session_id=session_id, step_id="a", step_type="auth", input_data="x" * 101
    )
    assert bad_fields(refused(stub.RecordStep, step)) == ["input_data"]
    call = pb.RecordLlmCallRequest(session_id=session_id, prompt_text="x" * 101)
    assert bad_fields(refused(stub.RecordLlmCall, call)) == ["prompt_text"]
    logs = pb.AppendLogsRequest(
        session_id=session_id, logs=[pb.LogInput(message="m" * 8193)]
    )
    assert bad_fields(refused(stub.AppendLogs, logs)) == ["logs[0].message"]


def test_logs_per_call_are_bounded(stub: pb_grpc.ProcessFlowServiceStub) -> None:
    session_id = new_session(stub)
    lines = [pb.LogInput(message=str(i)) for i in range(4)]
    request = pb.AppendLogsRequest(session_id=session_id, logs=lines)
    assert bad_fields(refused(stub.AppendLogs, request)) == ["logs"]
    step = pb.RecordStepRequest(
        session_id=session_id, step_id="a", step_type="auth", logs=lines
    )
    assert bad_fields(refused(stub.RecordStep, step)) == ["logs"]
    request = pb.AppendLogsRequest(session_id=session_id, logs=lines[:3])
    assert len(stub.AppendLogs(request, timeout=10).logs) == 3


def test_operations_per_ingest_are_bounded(
    stub: pb_grpc.ProcessFlowServiceStub,
) -> None:
    operation = pb.IngestOperation(
        start_session=pb.StartSessionRequest(user_id="u", query="q")
    )
    request = pb.IngestRequest(operations=[operation] * 3)
    assert bad_fields(refused(stub.Ingest, request)) == ["operations"]
    assert len(stub.Ingest(pb.IngestRequest(operations=[operation] * 2)).results) == 2


def test_steps_per_session_are_bounded(stub: pb_grpc.ProcessFlowServiceStub) -> None:
    session_id = new_session(stub)
    for step_id in ("a", "b"):
        stub.RecordStep(
            pb.RecordStepRequest(
                session_id=session_id, step_id=step_id, step_type="auth"
            ),
            timeout=10,
        )
    third = pb.RecordStepRequest(session_id=session_id, step_id="c", step_type="auth")
    error = refused(stub.RecordStep, third)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "limit of 2 steps" in error.details()  # type: ignore[attr-defined]
    # An existing step may still be updated.
    update = pb.RecordStepRequest(session_id=session_id, step_id="a", description="d")
    assert stub.RecordStep(update, timeout=10).step.description == "d"


def test_an_overloaded_server_sheds_calls_instead_of_queueing(
    server: InProcessServer, stub: pb_grpc.ProcessFlowServiceStub
) -> None:
    # No relay runs, so the session's event stays pending and WaitForCoverage
    # holds its slot until its deadline.
    session_id = new_session(stub)
    wait = pb.WaitForCoverageRequest(session_id=session_id)
    holders = [stub.WaitForCoverage.future(wait, timeout=60) for _ in range(2)]
    errors: list[grpc.StatusCode] = []

    def shed() -> bool:
        # A holder that arrived after a probe was itself shed: send it again.
        for index, holder in enumerate(holders):
            if holder.done():
                assert holder.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                holders[index] = stub.WaitForCoverage.future(wait, timeout=60)
        try:
            stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=5)
        except grpc.RpcError as error:
            errors.append(error.code())  # type: ignore[attr-defined]
            return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        return False

    try:
        wait_for(shed, timeout=20, interval=0.05, message="RESOURCE_EXHAUSTED")
        assert set(errors) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        for holder in holders:
            holder.cancel()

    # Once the slow calls are gone the server answers again.
    def answers() -> bool:
        try:
            stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=5)
        except grpc.RpcError:
            return False
        return True

    wait_for(answers, timeout=20, interval=0.05, message="calls admitted again")
