"""Request validation: every rule that needs no database, one function per call.

Each ``validate_*`` function returns the list of violations, each naming the
field by its path in the request (``logs[2].message``); ``prefix`` makes the
same rules serve the operations of an Ingest request
(``operations[3].record_step.``). ``check`` raises InvalidArgument naming
every bad field at once. Rules that need stored state (a step that must
exist, an end time before the stored start) live in the store and raise the
same error naming the same paths.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.errors import FieldViolation, InvalidArgument

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_ID_CHARS = 128
MAX_JSON_BYTES = 65_536
MAX_ERROR_CHARS = 65_536
MAX_TOKENS = 100_000_000
MAX_COST_USD = 1_000_000.0
MAX_TABLES = 200
MAX_PAGE_SIZE = 1000
# Timestamps a datetime can hold: 0001-01-01 to 9999-12-31.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799

FINAL_SESSION_STATUSES = frozenset(
    {
        res.SESSION_STATUS_COMPLETED,
        res.SESSION_STATUS_ERROR,
        res.SESSION_STATUS_CANCELLED,
    }
)


@dataclass(frozen=True)
class Limits:
    """The operator-tunable limits (ServerSettings carries the same fields)."""

    max_text_chars: int = 1_048_576
    max_logs_per_call: int = 1000
    max_ingest_operations: int = 5000
    max_steps_per_session: int = 10_000


def check(violations: Sequence[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(list(violations))


class _Rules:
    """Collects violations; each method checks one kind of rule."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(self.prefix + field, description))

    def identifier(self, field: str, value: str, *, required: bool) -> None:
        if not value:
            if required:
                self.add(field, "required")
            return
        if not ID_PATTERN.fullmatch(value):
            self.add(
                field,
                "must be 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', ':', '-'",
            )

    def text(
        self, field: str, value: str, max_chars: int, *, required: bool = False
    ) -> None:
        if not value:
            if required:
                self.add(field, "required")
            return
        if len(value) > max_chars:
            self.add(field, f"at most {max_chars} characters, got {len(value)}")

    def json_size(self, field: str, value: struct_pb2.Struct) -> None:
        size = len(json_text(value).encode("utf-8"))
        if size > MAX_JSON_BYTES:
            self.add(field, f"at most {MAX_JSON_BYTES} bytes as JSON, got {size}")

    def number_range(
        self, field: str, value: float, low: float, high: float | None = None
    ) -> None:
        if math.isnan(value) or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            self.add(field, f"must be {bound}, got {value}")

    def enum(self, field: str, value: int, descriptor: EnumDescriptor) -> None:
        if value not in descriptor.values_by_number:
            self.add(field, f"unknown {descriptor.name} value {value}")

    def timestamp(self, field: str, value: timestamp_pb2.Timestamp) -> None:
        if not MIN_SECONDS <= value.seconds <= MAX_SECONDS or not (
            0 <= value.nanos <= 999_999_999
        ):
            self.add(field, "not a valid time between years 1 and 9999")

    def time_order(
        self,
        start: timestamp_pb2.Timestamp | None,
        end: timestamp_pb2.Timestamp | None,
        field: str,
    ) -> None:
        if start is None or end is None:
            return
        if (end.seconds, end.nanos) < (start.seconds, start.nanos):
            self.add(field, "must not be before start_time")


def json_text(value: struct_pb2.Struct) -> str:
    """The Struct as compact JSON text, as it is stored and measured."""
    return json.dumps(
        json_format.MessageToDict(value), separators=(",", ":"), ensure_ascii=False
    )


def _optional_time(
    message: object, name: str, rules: _Rules
) -> timestamp_pb2.Timestamp | None:
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    before = len(rules.violations)
    rules.timestamp(name, value)
    return value if len(rules.violations) == before else None


def validate_start_session(
    request: pb.StartSessionRequest, limits: Limits, prefix: str = ""
) -> list[FieldViolation]:
    rules = _Rules(prefix)
    rules.identifier("request_id", request.request_id, required=False)
    rules.identifier("session_id", request.session_id, required=False)
    rules.text("user_id", request.user_id, 256, required=True)
    rules.text("query", request.query, 32_768, required=True)
    rules.text("query_type", request.query_type, 100)
    rules.text("conversation_id", request.conversation_id, 128)
    rules.text("message_id", request.message_id, 128)
    rules.text("intent", request.intent, 50)
    rules.text("domain", request.domain, 50)
    rules.text("template", request.template, 100)
    if len(request.tables_retrieved) > MAX_TABLES:
        rules.add(
            "tables_retrieved",
            f"at most {MAX_TABLES} names, got {len(request.tables_retrieved)}",
        )
    for index, table in enumerate(request.tables_retrieved):
        rules.text(f"tables_retrieved[{index}]", table, 128, required=True)
    if request.HasField("metadata"):
        rules.json_size("metadata", request.metadata)
    _optional_time(request, "start_time", rules)
    return rules.violations


def _validate_log(log: pb.LogInput, rules: _Rules, path: str) -> None:
    rules.identifier(f"{path}.step_id", log.step_id, required=False)
    rules.enum(f"{path}.level", log.level, res.LogLevel.DESCRIPTOR)
    rules.text(f"{path}.message", log.message, 8192, required=True)
    if log.HasField("details"):
        rules.json_size(f"{path}.details", log.details)
    rules.text(f"{path}.exception", log.exception, MAX_ERROR_CHARS)
    rules.text(f"{path}.source", log.source, 256)
    if log.HasField("timestamp"):
        rules.timestamp(f"{path}.timestamp", log.timestamp)


def _validate_logs(
    logs: Sequence[pb.LogInput], limits: Limits, rules: _Rules, *, required: bool
) -> None:
    if required and not logs:
        rules.add("logs", "at least one log line is required")
    if len(logs) > limits.max_logs_per_call:
        rules.add("logs", f"at most {limits.max_logs_per_call} lines, got {len(logs)}")
    for index, log in enumerate(logs):
        _validate_log(log, rules, f"logs[{index}]")


def validate_record_step(
    request: pb.RecordStepRequest, limits: Limits, prefix: str = ""
) -> list[FieldViolation]:
    rules = _Rules(prefix)
    rules.identifier("request_id", request.request_id, required=False)
    rules.identifier("session_id", request.session_id, required=True)
    rules.identifier("step_id", request.step_id, required=True)
    rules.text("step_type", request.step_type, 64)
    rules.identifier("parent_step_id", request.parent_step_id, required=False)
    if request.parent_step_id and request.parent_step_id == request.step_id:
        rules.add("parent_step_id", "a step cannot be its own parent")
    rules.text("name", request.name, 200)
    rules.text("description", request.description, 2000)
    rules.enum("status", request.status, res.StepStatus.DESCRIPTOR)
    start = _optional_time(request, "start_time", rules)
    end = _optional_time(request, "end_time", rules)
    rules.time_order(start, end, "end_time")
    if request.HasField("confidence"):
        rules.number_range("confidence", request.confidence, 0.0, 1.0)
    rules.text("input_data", request.input_data, limits.max_text_chars)
    rules.text("output_data", request.output_data, limits.max_text_chars)
    rules.text("error_message", request.error_message, MAX_ERROR_CHARS)
    if request.HasField("metadata"):
        rules.json_size("metadata", request.metadata)
    if request.HasField("tokens_used"):
        rules.number_range("tokens_used", request.tokens_used, 0)
    if request.HasField("retry_count"):
        rules.number_range("retry_count", request.retry_count, 0)
    _validate_logs(request.logs, limits, rules, required=False)
    return rules.violations


def validate_append_logs(
    request: pb.AppendLogsRequest, limits: Limits, prefix: str = ""
) -> list[FieldViolation]:
    rules = _Rules(prefix)
    rules.identifier("request_id", request.request_id, required=False)
    rules.identifier("session_id", request.session_id, required=True)
    _validate_logs(request.logs, limits, rules, required=True)
    return rules.violations


def validate_record_llm_call(
    request: pb.RecordLlmCallRequest, limits: Limits, prefix: str = ""
) -> list[FieldViolation]:
    rules = _Rules(prefix)
    rules.identifier("request_id", request.request_id, required=False)
    rules.identifier("session_id", request.session_id, required=True)
    rules.identifier("step_id", request.step_id, required=False)
    rules.identifier("call_id", request.call_id, required=False)
    rules.text("provider", request.provider, 50)
    rules.text("model", request.model, 100)
    rules.text("request_type", request.request_type, 50)
    rules.text("prompt_text", request.prompt_text, limits.max_text_chars)
    rules.text("response_text", request.response_text, limits.max_text_chars)
    rules.number_range("input_tokens", request.input_tokens, 0, MAX_TOKENS)
    rules.number_range("output_tokens", request.output_tokens, 0, MAX_TOKENS)
    rules.number_range("cost_usd", request.cost_usd, 0.0, MAX_COST_USD)
    rules.number_range("duration_ms", request.duration_ms, 0)
    rules.text("error_message", request.error_message, MAX_ERROR_CHARS)
    if request.HasField("temperature"):
        rules.number_range("temperature", request.temperature, 0.0, 2.0)
    if request.HasField("max_tokens"):
        rules.number_range("max_tokens", request.max_tokens, 1)
    if request.HasField("confidence"):
        rules.number_range("confidence", request.confidence, 0.0, 1.0)
    _optional_time(request, "call_time", rules)
    return rules.violations


def validate_complete_session(
    request: pb.CompleteSessionRequest, limits: Limits, prefix: str = ""
) -> list[FieldViolation]:
    rules = _Rules(prefix)
    rules.identifier("request_id", request.request_id, required=False)
    rules.identifier("session_id", request.session_id, required=True)
    if request.status == res.SESSION_STATUS_UNSPECIFIED:
        rules.add("status", "required: COMPLETED, ERROR or CANCELLED")
    elif request.status not in FINAL_SESSION_STATUSES:
        rules.add("status", "must be COMPLETED, ERROR or CANCELLED")
    rules.text("generated_sql", request.generated_sql, limits.max_text_chars)
    rules.text("execution_result", request.execution_result, limits.max_text_chars)
    rules.text("error_message", request.error_message, MAX_ERROR_CHARS)
    if request.HasField("overall_confidence"):
        rules.number_range("overall_confidence", request.overall_confidence, 0.0, 1.0)
    _optional_time(request, "end_time", rules)
    return rules.violations


INGEST_VALIDATORS = {
    "start_session": validate_start_session,
    "record_step": validate_record_step,
    "append_logs": validate_append_logs,
    "record_llm_call": validate_record_llm_call,
    "complete_session": validate_complete_session,
}


def validate_ingest(request: pb.IngestRequest, limits: Limits) -> list[FieldViolation]:
    rules = _Rules("")
    rules.identifier("request_id", request.request_id, required=False)
    count = len(request.operations)
    if count == 0:
        rules.add("operations", "at least one operation is required")
    elif count > limits.max_ingest_operations:
        rules.add(
            "operations",
            f"at most {limits.max_ingest_operations} operations, got {count}",
        )
    for index, operation in enumerate(request.operations):
        kind = operation.WhichOneof("operation")
        if kind is None:
            rules.add(f"operations[{index}]", "no operation set")
            continue
        validator = INGEST_VALIDATORS[kind]
        rules.violations.extend(
            validator(  # type: ignore[operator]
                getattr(operation, kind), limits, f"operations[{index}].{kind}."
            )
        )
    return rules.violations


def validate_session_id(session_id: str) -> list[FieldViolation]:
    """For GetSession, WatchSession and WaitForCoverage."""
    rules = _Rules("")
    rules.identifier("session_id", session_id, required=True)
    return rules.violations


def validate_list_sessions(request: pb.ListSessionsRequest) -> list[FieldViolation]:
    rules = _Rules("")
    rules.text("user_id", request.user_id, 256)
    rules.enum("status", request.status, res.SessionStatus.DESCRIPTOR)
    rules.text("query_type", request.query_type, 100)
    rules.text("conversation_id", request.conversation_id, 128)
    start = _optional_time(request, "start_time_from", rules)
    end = _optional_time(request, "start_time_to", rules)
    if (
        start is not None
        and end is not None
        and (end.seconds, end.nanos)
        < (
            start.seconds,
            start.nanos,
        )
    ):
        rules.add("start_time_to", "must not be before start_time_from")
    if request.page_size < 0:
        rules.add("page_size", f"must be 0 or more, got {request.page_size}")
    elif request.page_size > MAX_PAGE_SIZE:
        rules.add("page_size", f"at most {MAX_PAGE_SIZE}, got {request.page_size}")
    return rules.violations
