"""The servicer boundary: domain errors become gRPC status (with a
google.rpc.BadRequest for invalid arguments) through server.errors'
STATUS_CODES, anything unexpected becomes INTERNAL with a generic message
and a logged traceback, and every call ends with one ``rpc_finished`` line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from processflow import metrics
from server.auth import current_principal, wrap_service_handler
from server.errors import InvalidArgument, ProcessFlowError, status_code_for

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server logged the details"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def error_status(error: ProcessFlowError) -> grpc.Status:
    """The status a domain error is reported with."""
    code = status_code_for(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if isinstance(error, InvalidArgument):
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(request)
        status.details.append(detail)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    return rpc_status.to_status(status)


def _session_id(request: Any, response: Any = None) -> str:
    session_id = getattr(request, "session_id", "")
    if not session_id and response is not None and hasattr(response, "session"):
        session_id = response.session.session_id
    return str(session_id)


class _Outcome:
    """What one call ended with, for the rpc_finished line."""

    def __init__(self, method: str, request: Any) -> None:
        self.method = method
        self.request = request
        self.started = time.monotonic()
        self.code = grpc.StatusCode.OK
        self.session_id = _session_id(request)

    async def fail(self, error: BaseException, context: Context) -> None:
        """Records and reports ``error``; always raises (abort or re-raise)."""
        if isinstance(error, ProcessFlowError):
            status = error_status(error)
        elif isinstance(error, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            raise error
        elif _is_abort(error):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise error
        else:
            log.error(
                "unexpected error in %s",
                self.method,
                exc_info=error,
                extra={"event": "rpc_internal_error", "method": self.method},
            )
            status = internal_status()
        self.code = status.code
        await context.abort(status.code, status.details, status.trailing_metadata)

    def finish(self) -> None:
        principal = current_principal()
        metrics.record_rpc(self.method, self.code.name, time.monotonic() - self.started)
        log.info(
            "%s %s",
            self.method,
            self.code.name,
            extra={
                "event": "rpc_finished",
                "method": self.method,
                "code": self.code.name,
                "duration_ms": round((time.monotonic() - self.started) * 1000, 2),
                "session_id": self.session_id,
                # Set by the auth interceptor inside this one, in this task.
                "key_id": principal.key_id,
                "tenant": principal.tenant,
            },
        )


def _is_abort(error: BaseException) -> bool:
    return type(error).__name__ == "AbortError"


class BoundaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        return wrap_service_handler(
            handler, handler_call_details.method, _wrap_unary, _wrap_stream
        )


def _wrap_unary(
    method: str, behaviour: Callable[[Any, Context], Any]
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        outcome = _Outcome(method, request)
        try:
            response = behaviour(request, context)
            if asyncio.iscoroutine(response):
                response = await response
            outcome.session_id = _session_id(request, response)
            return response
        except BaseException as error:
            await outcome.fail(error, context)
            raise
        finally:
            outcome.finish()

    return handle


def _wrap_stream(
    method: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        outcome = _Outcome(method, request)
        try:
            async for message in behaviour(request, context):
                yield message
        except BaseException as error:
            await outcome.fail(error, context)
            raise
        finally:
            outcome.finish()

    return handle
