"""Between stored rows and API messages: status words, times, JSON, numbers."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from processflow.v1 import resources_pb2 as res

SESSION_STATUS_WORDS = {
    res.SESSION_STATUS_RUNNING: "running",
    res.SESSION_STATUS_COMPLETED: "completed",
    res.SESSION_STATUS_ERROR: "error",
    res.SESSION_STATUS_CANCELLED: "cancelled",
}
SESSION_STATUS_VALUES = {word: value for value, word in SESSION_STATUS_WORDS.items()}

STEP_STATUS_WORDS = {
    res.STEP_STATUS_PENDING: "pending",
    res.STEP_STATUS_RUNNING: "running",
    res.STEP_STATUS_COMPLETED: "completed",
    res.STEP_STATUS_ERROR: "error",
    res.STEP_STATUS_SKIPPED: "skipped",
    res.STEP_STATUS_CANCELLED: "cancelled",
}
STEP_STATUS_VALUES = {word: value for value, word in STEP_STATUS_WORDS.items()}
TERMINAL_STEP_WORDS = frozenset({"completed", "error", "skipped", "cancelled"})

LOG_LEVEL_WORDS = {
    res.LOG_LEVEL_DEBUG: "Debug",
    res.LOG_LEVEL_INFO: "Info",
    res.LOG_LEVEL_WARNING: "Warning",
    res.LOG_LEVEL_ERROR: "Error",
    res.LOG_LEVEL_CRITICAL: "Critical",
}
LOG_LEVEL_VALUES = {word: value for value, word in LOG_LEVEL_WORDS.items()}

CENT_MICROS = Decimal("0.00000001")
CONFIDENCE_STEP = Decimal("0.0001")


# Timestamp.ToDatetime and FromDatetime (pure Python, through calendar) cost
# more than the rest of a row's conversion; the arithmetic below gives the
# same values for the valid range that validation enforces.
EPOCH = dt.datetime(1970, 1, 1)
ONE_SECOND = dt.timedelta(seconds=1)


def to_datetime(value: timestamp_pb2.Timestamp) -> dt.datetime:
    """A Timestamp as naive UTC, as every column stores it."""
    return EPOCH + dt.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def to_timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A naive UTC datetime as a Timestamp."""
    seconds, rest = divmod(value - EPOCH, ONE_SECOND)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest.microseconds * 1000)


def set_time(message: Any, name: str, value: dt.datetime | None) -> None:
    if value is not None:
        getattr(message, name).CopyFrom(to_timestamp(value))


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return dict(json_format.MessageToDict(value))


def set_struct(message: Any, name: str, value: Mapping[str, Any] | None) -> None:
    if value is not None:
        json_format.ParseDict(dict(value), getattr(message, name))


def json_object_text(value: Mapping[str, Any] | None) -> str:
    """Compact JSON with sorted keys. A Struct's fields have no order, and a
    dict read back from JSONB or from another copy of the request comes in
    another one: sorting makes the same metadata the same text on every path
    (single call, Ingest, verify and backfill)."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def cost_decimal(value: float) -> Decimal:
    """A dollar amount rounded to the 8 places the call rows store."""
    return Decimal(repr(value)).quantize(CENT_MICROS, rounding=ROUND_HALF_EVEN)


def cost_text(value: Decimal) -> str:
    return format(value.quantize(CENT_MICROS, rounding=ROUND_HALF_EVEN), "f")


def confidence_decimal(value: float) -> Decimal:
    """Confidence rounded to the 4 places NUMERIC(5,4) keeps, so the answer to
    a write equals what a later read returns."""
    return Decimal(repr(value)).quantize(CONFIDENCE_STEP, rounding=ROUND_HALF_EVEN)


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def duration_ms(start: dt.datetime | None, end: dt.datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return (end - start) // dt.timedelta(milliseconds=1)


def session_message(row: Any) -> res.Session:
    """The session columns of a row as a Session (no steps, logs or calls)."""
    session = res.Session(
        session_id=row["session_id"],
        user_id=row["user_id"],
        query=row["query"],
        query_type=row["query_type"],
        status=SESSION_STATUS_VALUES.get(row["status"], res.SESSION_STATUS_UNSPECIFIED),
        generated_sql=row["generated_sql"] or "",
        execution_result=row["execution_result"] or "",
        error_message=row["error_message"] or "",
        conversation_id=row["conversation_id"] or "",
        message_id=row["message_id"] or "",
        intent=row["intent"] or "",
        domain=row["domain"] or "",
        template=row["template"] or "",
        tables_retrieved=row["tables_retrieved"] or [],
    )
    set_time(session, "start_time", row["start_time"])
    set_time(session, "end_time", row["end_time"])
    set_time(session, "created_at", row["created_at"])
    set_time(session, "updated_at", row["updated_at"])
    if row["total_duration_ms"] is not None:
        session.total_duration_ms = row["total_duration_ms"]
    if row["overall_confidence"] is not None:
        session.overall_confidence = float(row["overall_confidence"])
    set_struct(session, "metadata", row["metadata"])
    return session


def step_message(row: Any) -> res.Step:
    step = res.Step(
        step_id=row["step_id"],
        step_type=row["step_type"],
        parent_step_id=row["parent_step_id"] or "",
        name=row["name"],
        description=row["description"] or "",
        step_order=row["step_order"],
        status=STEP_STATUS_VALUES.get(row["status"], res.STEP_STATUS_UNSPECIFIED),
        input_data=row["input_data"] or "",
        output_data=row["output_data"] or "",
        error_message=row["error_message"] or "",
        retry_count=row["retry_count"],
        tokens_used=row["tokens_used"],
    )
    set_time(step, "start_time", row["start_time"])
    set_time(step, "end_time", row["end_time"])
    set_time(step, "created_at", row["created_at"])
    set_time(step, "updated_at", row["updated_at"])
    if row["duration_ms"] is not None:
        step.duration_ms = row["duration_ms"]
    if row["confidence"] is not None:
        step.confidence = float(row["confidence"])
    set_struct(step, "metadata", row["metadata"])
    return step


def log_message(row: Any) -> res.LogEntry:
    entry = res.LogEntry(
        log_id=row["id"],
        step_id=row["step_id"] or "",
        level=LOG_LEVEL_VALUES.get(row["log_level"], res.LOG_LEVEL_UNSPECIFIED),
        message=row["message"],
        exception=row["exception"] or "",
        source=row["source"] or "",
    )
    set_time(entry, "timestamp", row["timestamp"])
    set_struct(entry, "details", row["details"])
    return entry


def llm_call_message(row: Any) -> res.LlmCall:
    call = res.LlmCall(
        call_id=row["call_id"],
        step_id=row["step_id"] or "",
        provider=row["provider"] or "",
        model=row["model"] or "",
        request_type=row["request_type"] or "",
        prompt_text=row["prompt_text"] or "",
        response_text=row["response_text"] or "",
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        total_tokens=row["total_tokens"],
        cost_usd=float(row["cost"]),
        duration_ms=row["duration_ms"],
        success=bool(row["success"]),
        error_message=row["error_message"] or "",
    )
    set_time(call, "call_time", row["call_time"])
    if row["temperature"] is not None:
        call.temperature = row["temperature"]
    if row["max_tokens"] is not None:
        call.max_tokens = row["max_tokens"]
    if row["confidence"] is not None:
        call.confidence = float(row["confidence"])
    return call


def transparency_message(row: Any) -> res.Transparency:
    roll_up = res.Transparency(
        model=row["model"] or "",
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        total_tokens=row["total_tokens"],
        estimated_cost_usd=float(row["estimated_cost"]),
        ai_processing_time_ms=row["ai_processing_time_ms"],
        api_call_count=row["api_call_count"],
    )
    if row["temperature"] is not None:
        roll_up.temperature = row["temperature"]
    if row["max_tokens"] is not None:
        roll_up.max_tokens = row["max_tokens"]
    if row["confidence"] is not None:
        roll_up.confidence = float(row["confidence"])
    return roll_up


def coverage_message(total: int, pending: int, parked: int) -> res.Coverage:
    if parked:
        status = res.COVERAGE_STATUS_PARKED
    elif pending:
        status = res.COVERAGE_STATUS_PENDING
    else:
        status = res.COVERAGE_STATUS_COVERED
    return res.Coverage(
        status=status,
        total_events=total,
        applied_events=max(total - pending - parked, 0),
        pending_events=pending,
        parked_events=parked,
    )
