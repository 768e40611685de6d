"""Every domain error is mapped to a status code in STATUS_CODES, and the
servicer boundary reports each with that code (and BadRequest details for
invalid arguments); anything else becomes a generic INTERNAL."""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server import errors
from server.interceptors import INTERNAL_MESSAGE, Boundary, add_wrapped_service
from server.servicer import ProcessFlowServicer
from server.store.changes import ChangeFeed

DOMAIN_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ProcessFlowError) and cls is not errors.ProcessFlowError
]


def make_error(cls: type[errors.ProcessFlowError]) -> errors.ProcessFlowError:
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(
            [
                errors.FieldViolation("logs[2].message", "required"),
                errors.FieldViolation("session_id", "required"),
            ]
        )
    return cls(f"{cls.__name__} happened")


def test_every_domain_error_is_mapped() -> None:
    assert len(DOMAIN_ERRORS) >= 9
    for cls in DOMAIN_ERRORS:
        assert cls in errors.STATUS_CODES, f"{cls.__name__} has no status code"
        assert errors.status_code_for(make_error(cls)) == errors.STATUS_CODES[cls]
    assert len(set(errors.STATUS_CODES.values())) == len(errors.STATUS_CODES)


class FailingStore:
    """Raises the error it is given from every call."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def start_session(self, tenant_id: str, request: Any) -> Any:
        raise self.error


async def call_with_error(error: BaseException) -> grpc.aio.AioRpcError:
    executor = ThreadPoolExecutor(max_workers=1)
    server = grpc.aio.server()
    servicer = ProcessFlowServicer(
        FailingStore(error),  # type: ignore[arg-type]
        executor,
        ChangeFeed(),
        poll_interval_seconds=0.1,
    )
    add_wrapped_service(
        server, pb_grpc.add_ProcessFlowServiceServicer_to_server, servicer, [Boundary()]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.StartSession(
                    pb.StartSessionRequest(session_id="s-1"), timeout=10
                )
            return raised.value
    finally:
        await server.stop(None)
        executor.shutdown()


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_boundary_reports_each_error_with_its_code(
    cls: type[errors.ProcessFlowError], caplog: pytest.LogCaptureFixture
) -> None:
    error = make_error(cls)
    with caplog.at_level(logging.INFO, logger="server.interceptors"):
        failure = asyncio.run(call_with_error(error))
    assert failure.code() == errors.STATUS_CODES[cls]
    assert failure.details() == error.message
    status = rpc_status.from_call(failure)
    assert status is not None
    if cls is errors.InvalidArgument:
        (detail,) = status.details
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        assert [v.field for v in bad_request.field_violations] == [
            "logs[2].message",
            "session_id",
        ]
    finished = [r for r in caplog.records if getattr(r, "event", "") == "rpc_finished"]
    assert len(finished) == 1
    assert finished[0].code == errors.STATUS_CODES[cls].name  # type: ignore[attr-defined]
    assert finished[0].session_id == "s-1"  # type: ignore[attr-defined]
    assert finished[0].method == "StartSession"  # type: ignore[attr-defined]


def test_unexpected_error_is_internal_without_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="server.interceptors"):
        failure = asyncio.run(call_with_error(KeyError("secret internals")))
    assert failure.code() == grpc.StatusCode.INTERNAL
    assert failure.details() == INTERNAL_MESSAGE
    assert "secret" not in (failure.debug_error_string() or "")
    logged = [
        r for r in caplog.records if getattr(r, "event", "") == "rpc_internal_error"
    ]
    assert logged and logged[0].exc_info is not None
