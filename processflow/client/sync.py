"""The blocking tracker: ``Tracker``, its sessions and its steps."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
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


class Step(StepState):
    """A step of a ``Session``; see ``Session.step``."""

    session: Session

    def __enter__(self) -> Step:
        self.send_begin()
        self.enter_context()
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.exit_context()
        self.send_end(error)

    def send_begin(self) -> None:
        self.session.owner.call("RecordStep", self.begin_request())

    def send_end(self, error: BaseException | None) -> None:
        _send_while_unwinding(
            self.session.owner, "RecordStep", self.end_request(error), error
        )

    def llm_call(self, **fields: Any) -> res.LlmCall:
        return self.session.llm_call(step_id=self.step_id, **fields)


class Session(SessionState[Step]):
    """A session of a ``Tracker``; see ``Tracker.session``."""

    owner: Tracker
    step_class = Step

    def __enter__(self) -> Session:
        self.owner.call("StartSession", self.start_request())
        self.enter_context()
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.exit_context()
        request = self.exit_request(error)
        if request is not None:
            _send_while_unwinding(self.owner, "CompleteSession", request, error)

    def llm_call(self, *, step_id: str | None = None, **fields: Any) -> res.LlmCall:
        """Records one LLM call, under the open step unless ``step_id`` is
        given. Fields: see ``RecordLlmCallRequest``."""
        response = self.owner.call(
            "RecordLlmCall", self.llm_call_request(step_id, **fields)
        )
        return cast(res.LlmCall, response.call)

    def log(self, message: str, *, level: str = "info", **fields: Any) -> None:
        """Appends a session-level log line now."""
        self.owner.call("AppendLogs", self.logs_request(message, level=level, **fields))

    def complete(
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
            response = self.owner.call("CompleteSession", request)
        except TrackerError:
            # Not completed: leaving the context completes it after all.
            self.status = "running"
            raise
        return cast(res.Session, response.session)

    def fail(self, error_message: str, **fields: Any) -> res.Session:
        return self.complete(status="error", error_message=error_message, **fields)


class Tracker(TrackerCore[Session]):
    """Records sessions over one gRPC channel to ``target`` ($PROCESSFLOW_TARGET
    or 127.0.0.1:50051 when not given). ``api_key`` (else $PROCESSFLOW_API_KEY)
    is sent as a bearer token; ``credentials`` turn TLS on. Use as a context
    manager, or call ``close()``. Safe to share between threads. Sessions:
    see ``TrackerCore.session``."""

    session_class = Session

    def _connect(
        self,
        credentials: grpc.ChannelCredentials | None,
        service_config: dict[str, Any] | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._channel = config.create_channel(
            self.target,
            credentials=credentials,
            service_config=service_config,
            deadline_seconds=self.deadline_seconds,
            options=options,
        )
        self.stub = api_grpc.ProcessFlowServiceStub(self._channel)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any) -> Any:
        """Sends one request with the tracker's deadline; gRPC retries it on
        UNAVAILABLE (same bytes, same request_id)."""
        stub_method = getattr(self.stub, method)
        try:
            return stub_method(
                request, timeout=self.deadline_seconds, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise translate(method, error) from error

    def get_session(self, session_id: str) -> res.Session:
        response = self.call("GetSession", api.GetSessionRequest(session_id=session_id))
        return cast(res.Session, response.session)

    def watch(
        self, session_id: str, timeout_seconds: float | None = None
    ) -> Iterator[api.WatchSessionResponse]:
        """The session's states as they change (WatchSession), until it ends
        or ``timeout_seconds`` pass (then TrackerError DEADLINE_EXCEEDED)."""
        stream = self.stub.WatchSession(
            api.WatchSessionRequest(session_id=session_id),
            timeout=timeout_seconds,
            metadata=self._metadata,
        )
        try:
            yield from stream
        except grpc.RpcError as error:
            raise translate("WatchSession", error) from error
        finally:
            # Stops the stream when the caller leaves the loop early.
            stream.cancel()  # type: ignore[no-untyped-call]

    def step(
        self, code: str, *, name: str = "", record_output: bool = True
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorates a function so that each call is a step of the session
        open in the caller's context (nested under the open step). Outside
        any session of this tracker the function runs unrecorded."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(func):
                return cast(
                    Callable[P, R],
                    _wrap_coroutine(self, code, name, record_output, func),
                )

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                session = current_session()
                if not isinstance(session, Session) or session.owner is not self:
                    return func(*args, **kwargs)
                with session.step(code, name=name) as step:
                    result = func(*args, **kwargs)
                    if record_output and result is not None:
                        step.output = str(result)
                    return result

            return wrapper

        return decorate


def _wrap_coroutine(
    tracker: Tracker,
    code: str,
    name: str,
    record_output: bool,
    func: Callable[..., Any],
) -> Callable[..., Any]:
    # The blocking calls go to a worker thread so the event loop keeps
    # running; the context variables are set in the caller's task.
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = current_session()
        if not isinstance(session, Session) or session.owner is not tracker:
            return await func(*args, **kwargs)
        step = session.step(code, name=name)
        await asyncio.to_thread(step.send_begin)
        step.enter_context()
        try:
            result = await func(*args, **kwargs)
        except BaseException as error:
            step.exit_context()
            await asyncio.to_thread(step.send_end, error)
            raise
        step.exit_context()
        if record_output and result is not None:
            step.output = str(result)
        await asyncio.to_thread(step.send_end, None)
        return result

    return wrapper


def _send_while_unwinding(
    tracker: Tracker, method: str, request: Any, error: BaseException | None
) -> None:
    """Sends a closing request. While the block's own exception propagates,
    a tracking failure is logged instead of replacing that exception."""
    try:
        tracker.call(method, request)
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
