"""Random requests, valid and invalid, through a real server: nothing ever
ends in INTERNAL, and every INVALID_ARGUMENT names fields that exist."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from tests.property.strategies import messages
from tests.support.databases import SqliteDatabases
from tests.support.server import in_process_server

SERVICE = pb.DESCRIPTOR.services_by_name["ProcessFlowService"]
# The calls that answer at once; WatchSession and WaitForCoverage wait.
UNARY = [
    m for m in SERVICE.methods if m.name not in ("WatchSession", "WaitForCoverage")
]
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEGMENT = re.compile(r"(\w+)(?:\[(\d+)\])?")
MAX_TEXT = 1000


@pytest.fixture(scope="module")
def stub(
    sqlite_databases: SqliteDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.ProcessFlowServiceStub]:
    url = sqlite_databases.new(tmp_path_factory.mktemp("property"))
    with (
        in_process_server(url, max_text_chars=MAX_TEXT) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.ProcessFlowServiceStub(channel)


@pytest.fixture(scope="module")
def session_id(stub: pb_grpc.ProcessFlowServiceStub) -> str:
    session = f"prop-{uuid.uuid4().hex[:8]}"
    stub.StartSession(
        pb.StartSessionRequest(session_id=session, user_id="u", query="q")
    )
    stub.RecordStep(
        pb.RecordStepRequest(session_id=session, step_id="a", step_type="auth")
    )
    return session


def call(stub: Any, method: str, request: Any) -> tuple[grpc.StatusCode, list[str]]:
    try:
        getattr(stub, method)(request, timeout=20)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        fields: list[str] = []
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None and status.details, error
            bad_request = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(bad_request)
            fields = [v.field for v in bad_request.field_violations]
            assert fields, error
        return code, fields
    return grpc.StatusCode.OK, []


def resolves(descriptor: Descriptor, path: str) -> bool:
    """Whether ``path`` (``operations[2].record_step.logs[0].message``) names
    a field of ``descriptor``."""
    for part in path.split("."):
        match = SEGMENT.fullmatch(part)
        if match is None or match[1] not in descriptor.fields_by_name:
            return False
        field = descriptor.fields_by_name[match[1]]
        if field.message_type is not None:
            descriptor = field.message_type
    return True


@given(data=st.data())
def test_no_request_ends_in_internal(
    stub: pb_grpc.ProcessFlowServiceStub, session_id: str, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from(UNARY), label="method")
    request = data.draw(messages(method.input_type), label="request")
    if "session_id" in method.input_type.fields_by_name and data.draw(st.booleans()):
        request.session_id = session_id  # reach the store's own rules too
    code, fields = call(stub, method.name, request)
    assert code in EXPECTED, (method.name, code)
    for field in fields:
        assert resolves(method.input_type, field), (method.name, field)


def _base(method: str, session_id: str) -> Any:
    return {
        "StartSession": lambda: pb.StartSessionRequest(user_id="u", query="q"),
        "RecordStep": lambda: pb.RecordStepRequest(
            session_id=session_id, step_id="a", step_type="auth"
        ),
        "RecordLlmCall": lambda: pb.RecordLlmCallRequest(session_id=session_id),
        "AppendLogs": lambda: pb.AppendLogsRequest(
            session_id=session_id, logs=[pb.LogInput(message="m")]
        ),
        "CompleteSession": lambda: pb.CompleteSessionRequest(
            session_id=session_id, status=res.SESSION_STATUS_CANCELLED
        ),
        "ListSessions": lambda: pb.ListSessionsRequest(),
    }[method]()


# method, field path, a bad value
BAD_VALUES: list[tuple[str, str, Any]] = [
    ("StartSession", "user_id", ""),
    ("StartSession", "user_id", "u" * 257),
    ("StartSession", "query", "q" * 32_769),
    ("StartSession", "query_type", "t" * 101),
    ("StartSession", "session_id", "not an id"),
    ("StartSession", "request_id", "r" * 129),
    ("StartSession", "intent", "i" * 51),
    ("StartSession", "template", "t" * 101),
    ("StartSession", "conversation_id", "c" * 129),
    ("RecordStep", "step_id", "bad id"),
    ("RecordStep", "name", "n" * 201),
    ("RecordStep", "description", "d" * 2001),
    ("RecordStep", "input_data", "x" * (MAX_TEXT + 1)),
    ("RecordStep", "output_data", "x" * (MAX_TEXT + 1)),
    ("RecordStep", "confidence", float("nan")),
    ("RecordStep", "confidence", 1.5),
    ("RecordStep", "tokens_used", -1),
    ("RecordStep", "retry_count", -1),
    ("RecordStep", "status", 99),
    ("RecordLlmCall", "input_tokens", -1),
    ("RecordLlmCall", "output_tokens", 100_000_001),
    ("RecordLlmCall", "cost_usd", float("nan")),
    ("RecordLlmCall", "cost_usd", -0.5),
    ("RecordLlmCall", "temperature", 2.5),
    ("RecordLlmCall", "max_tokens", 0),
    ("RecordLlmCall", "model", "m" * 101),
    ("RecordLlmCall", "prompt_text", "p" * (MAX_TEXT + 1)),
    ("RecordLlmCall", "call_id", "bad id"),
    ("CompleteSession", "status", res.SESSION_STATUS_RUNNING),
    ("CompleteSession", "overall_confidence", 2.0),
    ("CompleteSession", "generated_sql", "s" * (MAX_TEXT + 1)),
    ("AppendLogs", "logs[0].message", ""),
    ("AppendLogs", "logs[0].message", "m" * 8193),
    ("AppendLogs", "logs[0].level", 99),
    ("AppendLogs", "logs[0].source", "s" * 257),
    ("ListSessions", "page_size", -1),
    ("ListSessions", "page_size", 1001),
    ("ListSessions", "user_id", "u" * 257),
]


def _set(message: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        match = SEGMENT.fullmatch(part)
        assert match is not None
        message = getattr(message, match[1])
        if match[2] is not None:
            message = message[int(match[2])]
    setattr(message, last, value)


@given(
    bad=st.sampled_from(BAD_VALUES),
    ingest=st.booleans(),
    request_id=st.one_of(st.just(""), st.uuids().map(str)),
)
def test_each_invalid_field_is_refused_by_name(
    stub: pb_grpc.ProcessFlowServiceStub,
    session_id: str,
    bad: tuple[str, str, Any],
    ingest: bool,
    request_id: str,
) -> None:
    method, path, value = bad
    request = _base(method, session_id)
    if request_id and "request_id" in request.DESCRIPTOR.fields_by_name:
        request.request_id = request_id
    _set(request, path, value)
    expected = path
    if ingest and method != "ListSessions":
        kind = re.sub(r"(?<!^)([A-Z])", r"_\1", method).lower()
        request = pb.IngestRequest(operations=[pb.IngestOperation(**{kind: request})])
        method, expected = "Ingest", f"operations[0].{kind}.{path}"
    code, fields = call(stub, method, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, path, code)
    assert expected in fields, (expected, fields)
