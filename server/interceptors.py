"""The servicer boundary: domain errors become gRPC status (with a
google.rpc.BadRequest for invalid arguments) through server.errors'
STATUS_CODES, anything unexpected becomes INTERNAL with a generic message
and a logged traceback, and every call ends with one ``rpc_finished`` line.

The boundary and the auth check wrap each ProcessFlowService method once, when
the service is registered (``add_wrapped_service``): a grpc.aio interceptor
would build the wrapped handler again on every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from processflow import metrics
from server.auth import current_principal
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
                # Set by the auth wrapper inside this one, in this task.
                "key_id": principal.key_id,
                "tenant": principal.tenant,
            },
        )


def _is_abort(error: BaseException) -> bool:
    return type(error).__name__ == "AbortError"


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


class Wrapper(Protocol):
    """Wraps a method's behaviour (given the method's short name)."""

    def wrap_unary(
        self, method: str, behaviour: Callable[[Any, Context], Any]
    ) -> Callable[[Any, Context], Awaitable[Any]]: ...

    def wrap_stream(
        self, method: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]: ...


class Boundary:
    """The boundary above as a Wrapper; it goes outermost, so that it maps
    the refusals of the wrappers inside it too."""

    wrap_unary = staticmethod(_wrap_unary)
    wrap_stream = staticmethod(_wrap_stream)


class _Registrar:
    """Stands in for the server while generated code registers a service, to
    collect the service's method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        """Ignored: add_registered_method_handlers gets the same methods."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, Handler]
    ) -> None:
        self.service = service
        self.handlers = handlers


def add_wrapped_service(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    wrappers: Sequence[Wrapper],
) -> None:
    """Registers ``servicer`` through its generated ``add_..._to_server``
    with every method's behaviour wrapped by ``wrappers``, outermost first.

    The wrapping happens here, once per method, rather than in a
    grpc.aio.ServerInterceptor, which builds new handlers on every call.
    """
    registrar = _Registrar()
    add_to_server(servicer, registrar)
    if not registrar.handlers:
        raise RuntimeError("the generated code registered no method handlers")
    wrapped = {
        name: _wrapped_handler(name, handler, wrappers)
        for name, handler in registrar.handlers.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(registrar.service, wrapped),)
    )
    # grpcio's type stubs do not know this method yet (grpcio 1.62 added it).
    server.add_registered_method_handlers(registrar.service, wrapped)  # type: ignore[attr-defined]


def _wrapped_handler(
    name: str, handler: Handler, wrappers: Sequence[Wrapper]
) -> Handler:
    if handler.unary_unary is not None:
        behaviour: Any = handler.unary_unary
        wrap = "wrap_unary"
        make = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream is not None:
        behaviour = handler.unary_stream
        wrap = "wrap_stream"
        make = grpc.unary_stream_rpc_method_handler
    else:
        raise RuntimeError(
            f"{name}: only unary and server-streaming methods are served"
        )
    for wrapper in reversed(wrappers):
        behaviour = getattr(wrapper, wrap)(name, behaviour)
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
