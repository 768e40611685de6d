"""What the sync and the async tracker share: the state of a session and of
its steps, and the requests built from it (pieces in messages.py). No I/O
happens here.

The enclosing session and step live in context variables, so that a step
opened inside another one (or a decorated function called inside it) nests
under it, per thread and per asyncio task.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, Generic, Self, TypeVar

import grpc

from processflow.catalog import CATALOG
from processflow.client import config
from processflow.client.messages import (
    MAX_ERROR_CHARS,
    MAX_TEXT_CHARS,
    SESSION_STATUSES,
    cut,
    describe_exception,
    is_cancellation,
    log_input,
    new_request_id,
    new_step_id,
    now,
    struct,
    timestamp,
)
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import resources_pb2 as res

StepT = TypeVar("StepT", bound="StepState")
SessionT = TypeVar("SessionT", bound="SessionState[Any]")

_current_session: ContextVar[SessionState[Any] | None] = ContextVar(
    "processflow_session", default=None
)
_current_step: ContextVar[StepState | None] = ContextVar(
    "processflow_step", default=None
)


class StepState:
    """One step being recorded. Set ``output``, ``confidence``,
    ``tokens_used``, ``metadata`` (a dict) and ``input`` while it runs; they
    are sent when it ends."""

    def __init__(
        self,
        session: SessionState[Any],
        code: str,
        *,
        parent: StepState | None = None,
        step_id: str | None = None,
        name: str = "",
        description: str = "",
        input: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        step_order: int | None = None,
    ) -> None:
        if not code:
            raise ValueError("step code must not be empty")
        self.session = session
        self.code = code
        self.step_id = step_id or new_step_id(code)
        self.parent_step_id = parent.step_id if parent is not None else ""
        self.name = name
        self.description = description
        self.step_order = step_order
        self.input = input
        self.output: str | None = None
        self.confidence: float | None = None
        self.tokens_used: int | None = None
        self.retry_count: int | None = None
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.start_time: dt.datetime | None = None
        self.end_time: dt.datetime | None = None
        self.status = "pending"
        self.error_message = ""
        self._failure: str | None = None
        self._skip_reason: str | None = None
        self._logs: list[api.LogInput] = []
        self._tokens: list[Token[StepState | None]] = []

    @property
    def display_name(self) -> str:
        """The name the server stores: the one given, else the catalog's
        name for the code, else the code."""
        entry = CATALOG.get(self.code)
        return self.name or (entry.name if entry else self.code)

    def log(
        self,
        message: str,
        *,
        level: str = "info",
        details: Mapping[str, Any] | None = None,
        exception: str = "",
        source: str = "",
    ) -> None:
        """Keeps a log line; it is sent with the step when the step ends."""
        self._logs.append(
            log_input(
                message,
                level=level,
                step_id=self.step_id,
                details=details,
                exception=exception,
                source=source,
            )
        )

    def fail(self, message: str) -> None:
        """Marks the step failed when it ends, without raising."""
        self._failure = message or "failed"

    def skip(self, reason: str = "") -> None:
        """Marks the step skipped when it ends."""
        self._skip_reason = reason

    def begin_request(self) -> api.RecordStepRequest:
        self.start_time = now()
        self.status = "running"
        return api.RecordStepRequest(
            request_id=new_request_id(),
            session_id=self.session.session_id,
            step_id=self.step_id,
            step_type=self.code,
            parent_step_id=self.parent_step_id,
            name=self.name,
            description=self.description,
            step_order=self.step_order,
            status=res.STEP_STATUS_RUNNING,
            start_time=timestamp(self.start_time),
            input_data=cut(self.input or "", MAX_TEXT_CHARS),
        )

    def end_request(self, error: BaseException | None) -> api.RecordStepRequest:
        self.end_time = now()
        status = res.STEP_STATUS_COMPLETED
        if error is not None:
            self.error_message, trace = describe_exception(error)
            status = res.STEP_STATUS_CANCELLED
            if not is_cancellation(error):
                status = res.STEP_STATUS_ERROR
                self._logs.append(
                    log_input(
                        self.error_message,
                        level="error",
                        step_id=self.step_id,
                        exception=trace,
                    )
                )
        elif self._failure is not None:
            status = res.STEP_STATUS_ERROR
            self.error_message = cut(self._failure, MAX_ERROR_CHARS)
        elif self._skip_reason is not None:
            status = res.STEP_STATUS_SKIPPED
            if self._skip_reason:
                self._logs.append(
                    log_input(f"skipped: {self._skip_reason}", step_id=self.step_id)
                )
        self.status = res.StepStatus.Name(status).removeprefix("STEP_STATUS_").lower()
        request = api.RecordStepRequest(
            request_id=new_request_id(),
            session_id=self.session.session_id,
            step_id=self.step_id,
            status=status,
            start_time=timestamp(self.start_time or self.end_time),
            end_time=timestamp(self.end_time),
            confidence=self.confidence,
            tokens_used=self.tokens_used,
            retry_count=self.retry_count,
            error_message=self.error_message,
            metadata=struct(self.metadata),
            logs=self._logs,
        )
        if self.output is not None:
            request.output_data = cut(str(self.output), MAX_TEXT_CHARS)
        if self.input is not None:
            request.input_data = cut(self.input, MAX_TEXT_CHARS)
        self._logs = []
        return request

    def enter_context(self) -> None:
        # The block starts now, after the "running" call returned: the step's
        # duration is the block's, without the tracker's own round trip.
        self.start_time = now()
        self._tokens.append(_current_step.set(self))

    def exit_context(self) -> None:
        _current_step.reset(self._tokens.pop())

    def step(self, code: str, **fields: Any) -> Self:
        """A child step of this one."""
        return type(self)(self.session, code, parent=self, **fields)


class SessionState(Generic[StepT]):
    """One session being recorded; its steps are ``step_class``."""

    step_class: type[StepT]

    def __init__(
        self,
        owner: object,
        user_id: str,
        query: str,
        *,
        session_id: str | None = None,
        query_type: str = "",
        intent: str = "",
        domain: str = "",
        template: str = "",
        tables_retrieved: Iterable[str] = (),
        conversation_id: str = "",
        message_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.owner = owner
        self.session_id = session_id or str(uuid.uuid4())
        self.user_id = user_id
        self.query = query
        self.query_type = query_type
        self.intent = intent
        self.domain = domain
        self.template = template
        self.tables_retrieved = list(tables_retrieved)
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.metadata = dict(metadata or {})
        self.start_time: dt.datetime | None = None
        self.status = "pending"
        self._tokens: list[
            tuple[Token[SessionState[Any] | None], Token[StepState | None]]
        ] = []

    def step(
        self,
        code: str,
        *,
        step_id: str | None = None,
        name: str = "",
        description: str = "",
        input: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        step_order: int | None = None,
    ) -> StepT:
        """A step to open with ``with`` (``async with`` for an async
        session), nested under the step open in this context, if any."""
        return self.step_class(
            self,
            code,
            parent=self.enclosing_step(),
            step_id=step_id,
            name=name,
            description=description,
            input=input,
            metadata=metadata,
            step_order=step_order,
        )

    def start_request(self) -> api.StartSessionRequest:
        self.start_time = now()
        self.status = "running"
        return api.StartSessionRequest(
            request_id=new_request_id(),
            session_id=self.session_id,
            user_id=self.user_id,
            query=self.query,
            query_type=self.query_type,
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            intent=self.intent,
            domain=self.domain,
            template=self.template,
            tables_retrieved=self.tables_retrieved,
            metadata=struct(self.metadata),
            start_time=timestamp(self.start_time),
        )

    def complete_request(
        self,
        status: str,
        *,
        generated_sql: str = "",
        execution_result: str = "",
        error_message: str = "",
        overall_confidence: float | None = None,
    ) -> api.CompleteSessionRequest:
        if status not in SESSION_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(SESSION_STATUSES)}, got {status!r}"
            )
        self.status = status
        return api.CompleteSessionRequest(
            request_id=new_request_id(),
            session_id=self.session_id,
            status=SESSION_STATUSES[status],
            generated_sql=cut(generated_sql, MAX_TEXT_CHARS),
            execution_result=cut(execution_result, MAX_TEXT_CHARS),
            error_message=cut(error_message, MAX_ERROR_CHARS),
            overall_confidence=overall_confidence,
            end_time=timestamp(now()),
        )

    def exit_request(
        self, error: BaseException | None
    ) -> api.CompleteSessionRequest | None:
        """The completion a session context sends on exit, unless the code
        completed the session itself."""
        if self.status != "running":
            return None
        if error is None:
            return self.complete_request("completed")
        message, _ = describe_exception(error)
        status = "cancelled" if is_cancellation(error) else "error"
        return self.complete_request(status, error_message=message)

    def llm_call_request(
        self,
        step_id: str | None,
        *,
        provider: str = "",
        model: str = "",
        prompt_text: str = "",
        response_text: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
        duration_ms: int = 0,
        success: bool = True,
        error_message: str = "",
        request_type: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        confidence: float | None = None,
        call_id: str | None = None,
        call_time: dt.datetime | None = None,
    ) -> api.RecordLlmCallRequest:
        if step_id is None:
            enclosing = self.enclosing_step()
            step_id = enclosing.step_id if enclosing is not None else ""
        return api.RecordLlmCallRequest(
            request_id=new_request_id(),
            session_id=self.session_id,
            step_id=step_id,
            call_id=call_id or str(uuid.uuid4()),
            provider=provider,
            model=model,
            request_type=request_type,
            prompt_text=cut(prompt_text, MAX_TEXT_CHARS),
            response_text=cut(response_text, MAX_TEXT_CHARS),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            duration_ms=duration_ms,
            success=success,
            error_message=cut(error_message, MAX_ERROR_CHARS),
            temperature=temperature,
            max_tokens=max_tokens,
            confidence=confidence,
            call_time=timestamp(call_time or now()),
        )

    def logs_request(
        self,
        message: str,
        *,
        level: str = "info",
        details: Mapping[str, Any] | None = None,
        exception: str = "",
        source: str = "",
    ) -> api.AppendLogsRequest:
        return api.AppendLogsRequest(
            request_id=new_request_id(),
            session_id=self.session_id,
            logs=[
                log_input(
                    message,
                    level=level,
                    details=details,
                    exception=exception,
                    source=source,
                )
            ],
        )

    def enclosing_step(self) -> StepState | None:
        """The innermost open step of this session in the current context."""
        step = _current_step.get()
        return step if step is not None and step.session is self else None

    def enter_context(self) -> None:
        self._tokens.append((_current_session.set(self), _current_step.set(None)))

    def exit_context(self) -> None:
        session_token, step_token = self._tokens.pop()
        _current_step.reset(step_token)
        _current_session.reset(session_token)


class TrackerCore(Generic[SessionT]):
    """What both trackers share: the target, the deadline, the metadata sent
    with every call, and the sessions they open (``session_class``). Only the
    channel, and whether a call blocks or is awaited, differ."""

    session_class: type[SessionT]

    def __init__(
        self,
        target: str | None = None,
        *,
        deadline_seconds: float = config.DEFAULT_DEADLINE_SECONDS,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        service_config: dict[str, Any] | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target or config.default_target()
        self.deadline_seconds = deadline_seconds
        self._metadata = config.call_metadata(api_key, metadata)
        self._connect(credentials, service_config, options)

    def _connect(
        self,
        credentials: grpc.ChannelCredentials | None,
        service_config: dict[str, Any] | None,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        """Opens the channel and its stub."""
        raise NotImplementedError

    def session(
        self,
        user_id: str,
        query: str,
        *,
        session_id: str | None = None,
        query_type: str = "",
        intent: str = "",
        domain: str = "",
        template: str = "",
        tables_retrieved: Iterable[str] = (),
        conversation_id: str = "",
        message_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionT:
        """A session to open with ``with`` (``async with`` for the async
        tracker): started on entry, completed on exit (status error when the
        block raises) unless completed before."""
        return self.session_class(
            self,
            user_id,
            query,
            session_id=session_id,
            query_type=query_type,
            intent=intent,
            domain=domain,
            template=template,
            tables_retrieved=tables_retrieved,
            conversation_id=conversation_id,
            message_id=message_id,
            metadata=metadata,
        )


def current_session() -> SessionState[Any] | None:
    """The innermost open session in this thread or task, if any."""
    return _current_session.get()


def current_step() -> StepState | None:
    """The innermost open step in this thread or task, if any."""
    return _current_step.get()
