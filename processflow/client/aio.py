"""The asyncio tracker (grpc.aio): ``AsyncTracker``, its sessions and steps."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import grpc

from processflow.client import config
from processflow.client.core import (
    SessionState,
    StepState,
    TrackerCore,
    current_session,
)
from processflow.client.errors import TrackerError, translate
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import processflow_service_pb2_grpc as api_grpc
from processflow.v1 import resources_pb2 as res

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class AsyncStep(StepState):
    """A step of an ``AsyncSession``; see ``AsyncSession.step``."""

    session: AsyncSession

    async def __aenter__(self) -> AsyncStep:
        await self.session.owner.call("RecordStep", self.begin_request())
        self.enter_context()
        return self

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.exit_context()
        await _send_while_unwinding(
            self.session.owner, "RecordStep", self.end_request(error), error
        )

    async def llm_call(self, **fields: Any) -> res.LlmCall:
        return await self.session.llm_call(step_id=self.step_id, **fields)


class AsyncSession(SessionState[AsyncStep]):
    """A session of an ``AsyncTracker``; see ``AsyncTracker.session``."""

    owner: AsyncTracker
    step_class = AsyncStep

    async def __aenter__(self) -> AsyncSession:
        await self.owner.call("StartSession", self.start_request())
        self.enter_context()
        return self

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.exit_context()
        request = self.exit_request(error)
        if request is not None:
            await _send_while_unwinding(self.owner, "CompleteSession", request, error)

    async def llm_call(
        self, *, step_id: str | None = None, **fields: Any
    ) -> res.LlmCall:
        """Records one LLM call, under the open step unless ``step_id`` is
        given. Fields: see ``RecordLlmCallRequest``."""
        request = self.llm_call_request(step_id, **fields)
        response = await self.owner.call("RecordLlmCall", request)
        return cast(res.LlmCall, response.call)

    async def log(self, message: str, *, level: str = "info", **fields: Any) -> None:
        """Appends a session-level log line now."""
        await self.owner.call(
            "AppendLogs", self.logs_request(message, level=level, **fields)
        )

    async def complete(
        self,
        *,
        status: str = "completed",
        generated_sql: str = "",
        execution_result: str = "",
        error_message: str = "",
        overall_confidence: float | None = None,
    ) -> res.Session:
        """Ends the session now (the context then sends nothing more)."""
        request = self.complete_request(
            status,
            generated_sql=generated_sql,
            execution_result=execution_result,
            error_message=error_message,
            overall_confidence=overall_confidence,
        )
        try:
            response = await self.owner.call("CompleteSession", request)
        except TrackerError:
            # Not completed: leaving the context completes it after all.
            self.status = "running"
            raise
        return cast(res.Session, response.session)

    async def fail(self, error_message: str, **fields: Any) -> res.Session:
        return await self.complete(
            status="error", error_message=error_message, **fields
        )


class AsyncTracker(TrackerCore[AsyncSession]):
    """Records sessions over one grpc.aio channel to ``target``
    ($PROCESSFLOW_TARGET or 127.0.0.1:50051 when not given). ``api_key`` (else
    $PROCESSFLOW_API_KEY) is sent as a bearer token; ``credentials`` turn TLS
    on. Use with ``async with``, or await ``close()``. Create it inside the
    event loop that uses it. Sessions: see ``TrackerCore.session``."""

    session_class = AsyncSession

    def _connect(
        self,
        credentials: grpc.ChannelCredentials | None,
        service_config: dict[str, Any] | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._channel = config.create_aio_channel(
            self.target,
            credentials=credentials,
            service_config=service_config,
            deadline_seconds=self.deadline_seconds,
            options=options,
        )
        self.stub = api_grpc.ProcessFlowServiceStub(self._channel)

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def call(self, method: str, request: Any) -> Any:
        """Sends one request with the tracker's deadline; gRPC retries it on
        UNAVAILABLE (same bytes, same request_id)."""
        stub_method = getattr(self.stub, method)
        try:
            return await stub_method(
                request, timeout=self.deadline_seconds, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise translate(method, error) from error

    async def get_session(self, session_id: str) -> res.Session:
        response = await self.call(
            "GetSession", api.GetSessionRequest(session_id=session_id)
        )
        return cast(res.Session, response.session)

    async def watch(
        self, session_id: str, timeout_seconds: float | None = None
    ) -> AsyncIterator[api.WatchSessionResponse]:
        """The session's states as they change (WatchSession), until it ends
        or ``timeout_seconds`` pass (then TrackerError DEADLINE_EXCEEDED)."""
        stream = self.stub.WatchSession(
            api.WatchSessionRequest(session_id=session_id),
            timeout=timeout_seconds,
            metadata=self._metadata,
        )
        try:
            async for response in stream:
                yield response
        except grpc.RpcError as error:
            raise translate("WatchSession", error) from error
        finally:
            stream.cancel()

    def step(
        self, code: str, *, name: str = "", record_output: bool = True
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorates a coroutine function so that each call is a step of the
        session open in the caller's task (nested under the open step).
        Outside any session of this tracker the function runs unrecorded."""

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(
                    f"AsyncTracker.step decorates coroutine functions; "
                    f"{getattr(func, '__qualname__', func)!r} is not one "
                    "(use Tracker.step for plain functions)"
                )

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                session = current_session()
                if not isinstance(session, AsyncSession) or session.owner is not self:
                    return await func(*args, **kwargs)
                async with session.step(code, name=name) as step:
                    result = await func(*args, **kwargs)
                    if record_output and result is not None:
                        step.output = str(result)
                    return result

            return wrapper

        return decorate


async def _send_while_unwinding(
    tracker: AsyncTracker, method: str, request: Any, error: BaseException | None
) -> None:
    """Sends a closing request. While the block's own exception propagates,
    a tracking failure is logged instead of replacing that exception."""
    try:
        await tracker.call(method, request)
    except TrackerError as failure:
        if error is None:
            raise
        log.warning(
            "could not record the end of a failed block",
            extra={
                "event": "tracker_close_failed",
                "method": method,
                "code": failure.code.name,
            },
        )
