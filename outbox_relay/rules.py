"""The legacy rules of LEGACY.md §4: one pure function per outbox event type,
turning the event into the legacy rows it writes or updates.

Nothing here touches a database. The relay hands the effects to
outbox_relay.legacy_store, which executes them; a backfill or ``verify`` can
use the same functions to know what the legacy tables should hold.

Every row passes through ``fit``, which cuts text to the legacy column's
VARCHAR size (TEXT stays whole), so a long value never fails an insert. Legacy
timestamps that say when a row was written (CreatedAt, UpdatedDate, ...) take
the time the server wrote the event, so a redelivery writes the same values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from outbox_relay import legacy_schema as ls
from processflow.catalog import PROMPT_BUILDING, SQL_EXECUTION, is_prompt_construction
from processflow.v1 import events_pb2, resources_pb2

# Fixed forever: changing it would give redelivered or backfilled rows new ids.
ID_NAMESPACE = uuid.UUID("5b0f8d0e-3c1a-4e53-9c55-0d6c3f2a7e41")
_ID_NAMESPACE_BYTES = ID_NAMESPACE.bytes

UNKNOWN = "unknown"
UNKNOWN_PROVIDER = "unknown-provider"
UNKNOWN_MODEL = "unknown-model"
DEFAULT_REQUEST_TYPE = "sql_generation"
DEFAULT_QUERY_TYPE = "enhanced"
DEFAULT_INTENT = "sql_generation"

PST = ls.prompt_success_tracking.name
TRACES = ls.prompt_construction_traces.name
STEPS = ls.prompt_construction_steps.name
TOKEN_USAGE = ls.token_usage_analytics.name
LLM_USAGE = ls.llm_usage_logs.name

_CONFIDENCE = Decimal("0.0001")
_COST = Decimal("0.000001")

SESSION_STATUS_NAMES = {
    resources_pb2.SESSION_STATUS_RUNNING: "running",
    resources_pb2.SESSION_STATUS_COMPLETED: "completed",
    resources_pb2.SESSION_STATUS_ERROR: "error",
    resources_pb2.SESSION_STATUS_CANCELLED: "cancelled",
}
TERMINAL_STEP_STATUSES = frozenset(
    {
        resources_pb2.STEP_STATUS_COMPLETED,
        resources_pb2.STEP_STATUS_ERROR,
        resources_pb2.STEP_STATUS_SKIPPED,
        resources_pb2.STEP_STATUS_CANCELLED,
    }
)


class RuleError(ValueError):
    """The event cannot be turned into legacy rows (corrupt or unknown)."""


@dataclass(frozen=True)
class RowInsert:
    """Insert one row into a legacy table."""

    table: str
    values: dict[str, Any]
    # A table whose row this one references (foreign key): when that sink is
    # switched off, this row cannot be written either.
    requires: str | None = None


@dataclass(frozen=True)
class RowUpdate:
    """Update the row of ``table`` whose ``key_column`` equals ``key``."""

    table: str
    key_column: str
    key: str
    values: dict[str, Any]


@dataclass(frozen=True)
class TokenUsageIncrement:
    """Add one LLM call (or several, once merged) to a TokenUsageAnalytics day."""

    user_id: str
    usage_date: dt.date
    request_type: str
    intent_type: str
    requests: int
    tokens: int
    cost: Decimal
    # When the first and the last of the merged calls were recorded.
    first_at: dt.datetime
    at: dt.datetime
    table: str = field(default=TOKEN_USAGE, init=False)

    @property
    def key(self) -> tuple[str, dt.date, str, str]:
        return (self.user_id, self.usage_date, self.request_type, self.intent_type)

    def merged(self, other: TokenUsageIncrement) -> TokenUsageIncrement:
        return TokenUsageIncrement(
            self.user_id,
            self.usage_date,
            self.request_type,
            self.intent_type,
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.cost + other.cost,
            min(self.first_at, other.first_at),
            max(self.at, other.at),
        )


Effect = RowInsert | RowUpdate | TokenUsageIncrement


# Helpers shared by the rules (and by anything that must agree with them).


def trace_id(session_id: str) -> str:
    return "trace-" + session_id


def legacy_id(table: str, *natural_key: str) -> str:
    """Deterministic Id for a VARCHAR Id column: the same key, the same id.

    This is ``str(uuid.uuid5(ID_NAMESPACE, name))`` spelled out, because the
    relay computes two of these per event and uuid5 builds a UUID object
    only to print it.
    """
    name = "\x1f".join((table, *natural_key)).encode()
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def token_usage_id(
    user_id: str, usage_date: dt.date, request_type: str, intent: str
) -> str:
    return legacy_id(TOKEN_USAGE, user_id, usage_date.isoformat(), request_type, intent)


# VARCHAR sizes of every legacy column, by table (TEXT columns have none).
_SIZES: dict[str, dict[str, int]] = {
    table.name: {
        column.name: int(column.type.length)
        for column in table.c
        if isinstance(column.type, sa.String) and column.type.length
    }
    for table in ls.LEGACY_TABLES
}


_SIZED = {table: tuple(sizes.items()) for table, sizes in _SIZES.items()}


def fit(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """Cuts every text value to its legacy column's size (TEXT stays whole)."""
    get = values.get
    for name, size in _SIZED[table]:
        value = get(name)
        if isinstance(value, str) and len(value) > size:
            values[name] = value[:size]
    return values


def confidence(value: float | None) -> Decimal:
    if value is None:
        return Decimal(0)
    return Decimal(repr(value)).quantize(_CONFIDENCE, rounding=ROUND_HALF_UP)


def cost(text: str) -> Decimal:
    if not text:
        return Decimal(0)
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise RuleError(f"cost_usd is not a decimal number: {text[:40]!r}") from None
    if not value.is_finite():
        raise RuleError(f"cost_usd is not a finite number: {text[:40]!r}")
    return value


_EPOCH = dt.datetime(1970, 1, 1)
# The range protobuf allows, 0001-01-01 to 9999-12-31 (all of datetime's).
_TIMESTAMP_SECONDS = range(-62135596800, 253402300799 + 1)


def timestamp(message: Any, name: str) -> dt.datetime | None:
    """The field as a naive UTC datetime, as Timestamp.ToDatetime() gives it
    (microseconds truncated), computed directly: the relay converts several
    timestamps per event and ToDatetime re-validates each one in Python."""
    if not message.HasField(name):
        return None
    value: Timestamp = getattr(message, name)
    seconds, nanos = value.seconds, value.nanos
    if seconds not in _TIMESTAMP_SECONDS or not 0 <= nanos < 1_000_000_000:
        return value.ToDatetime()  # raises, naming what is wrong
    return _EPOCH + dt.timedelta(0, seconds, nanos // 1000)


def occurred_at(event: events_pb2.OutboxEvent, now: dt.datetime) -> dt.datetime:
    return timestamp(event, "occurred_at") or now


# json.dumps with these options builds a new encoder at every call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_encode_string = json.encoder.encode_basestring
# Scalars whose JSON text _JSON would write with repr() (bool is an int, so
# it is listed first and never reaches repr).
_SCALAR_TEXT: dict[Any, str] = {None: "null", True: "true", False: "false"}


def metadata_json(values: dict[str, Any]) -> str:
    """``_JSON.encode(values)`` for a flat object, written directly: even
    the C encoder is built afresh at every one-shot call, which for the
    relay's two small objects per session costs more than the text itself.
    Anything but strings, None, booleans, ints and finite floats goes
    through the encoder."""
    parts = []
    for key, value in values.items():
        kind = type(value)
        if kind is str:
            text = _encode_string(value)
        elif value is None or kind is bool:
            text = _SCALAR_TEXT[value]
        elif kind is int or (kind is float and math.isfinite(value)):
            text = repr(value)
        else:
            return _JSON.encode(values)
        parts.append(f"{_encode_string(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def _text_or_none(value: str) -> str | None:
    return value or None


# One rule per event type.


def session_started(event: events_pb2.OutboxEvent, now: dt.datetime) -> list[Effect]:
    started = event.session_started
    at = occurred_at(event, now)
    start_time = timestamp(started, "start_time") or at
    user_id = started.user_id or UNKNOWN
    tracking = {
        "SessionId": event.session_id,
        "UserId": user_id,
        "UserQuestion": started.query,
        "GeneratedPrompt": "",
        "TemplateUsed": _text_or_none(started.template),
        "IntentClassified": started.intent or UNKNOWN,
        "DomainClassified": started.domain or UNKNOWN,
        "TablesRetrieved": _text_or_none(",".join(started.tables_retrieved)),
        "GeneratedSQL": None,
        "SQLExecutionSuccess": None,
        "SQLExecutionError": None,
        "UserFeedbackRating": None,
        "UserFeedbackComments": None,
        "ProcessingTimeMs": 0,
        "ConfidenceScore": Decimal(0),
        "CreatedDate": start_time,
        "UpdatedDate": None,
    }
    trace = {
        "Id": legacy_id(TRACES, trace_id(event.session_id)),
        "TraceId": trace_id(event.session_id),
        "UserId": user_id,
        "UserQuestion": started.query,
        "IntentType": started.intent or started.query_type or DEFAULT_QUERY_TYPE,
        "StartTime": start_time,
        "EndTime": None,
        "OverallConfidence": Decimal(0),
        "TotalTokens": 0,
        "FinalPrompt": None,
        "Success": False,
        "ErrorMessage": None,
        "Metadata": None,
        "CreatedAt": at,
        "UpdatedAt": at,
    }
    return [RowInsert(PST, fit(PST, tracking)), RowInsert(TRACES, fit(TRACES, trace))]


def step_finished(event: events_pb2.OutboxEvent, now: dt.datetime) -> list[Effect]:
    step = event.step_finished
    if step.status not in TERMINAL_STEP_STATUSES:
        raise RuleError(f"step_finished.status is not terminal: {step.status}")
    at = occurred_at(event, now)
    step_type = step.step_type
    prompt_construction = is_prompt_construction(step_type, step.parent_step_type)
    if not prompt_construction and step_type != SQL_EXECUTION:
        return []  # Most steps have no legacy row.
    completed = step.status == resources_pb2.STEP_STATUS_COMPLETED
    effects: list[Effect] = []

    if prompt_construction:
        end_time = timestamp(step, "end_time")
        row = {
            "Id": legacy_id(STEPS, event.session_id, step.step_id),
            "TraceId": trace_id(event.session_id),
            "StepName": step.name or step.step_type,
            "StepOrder": step.step_order,
            "StartTime": timestamp(step, "start_time") or end_time or at,
            "EndTime": end_time,
            "Success": completed,
            "TokensAdded": step.tokens_used,
            "Confidence": confidence(
                step.confidence if step.HasField("confidence") else None
            ),
            "Content": _text_or_none(step.output_data),
            "Details": _text_or_none(step.metadata_json),
            "ErrorMessage": _text_or_none(step.error_message),
            "CreatedAt": at,
        }
        effects.append(RowInsert(STEPS, fit(STEPS, row), requires=TRACES))

    if step_type == PROMPT_BUILDING and completed:
        effects.append(
            RowUpdate(
                PST,
                "SessionId",
                event.session_id,
                fit(PST, {"GeneratedPrompt": step.output_data, "UpdatedDate": at}),
            )
        )
        effects.append(
            RowUpdate(
                TRACES,
                "TraceId",
                trace_id(event.session_id),
                fit(TRACES, {"FinalPrompt": step.output_data, "UpdatedAt": at}),
            )
        )

    if step_type == SQL_EXECUTION:
        values = {
            "SQLExecutionSuccess": completed,
            "SQLExecutionError": _text_or_none(step.error_message),
            "UpdatedDate": at,
        }
        effects.append(RowUpdate(PST, "SessionId", event.session_id, fit(PST, values)))
    return effects


def llm_call_recorded(event: events_pb2.OutboxEvent, now: dt.datetime) -> list[Effect]:
    call = event.llm_call_recorded
    at = occurred_at(event, now)
    call_time = timestamp(call, "call_time") or at
    user_id = call.user_id or UNKNOWN
    call_cost = cost(call.cost_usd)
    metadata = {
        "session_id": event.session_id,
        "step_id": call.step_id or None,
        "temperature": call.temperature if call.HasField("temperature") else None,
        "max_tokens": call.max_tokens if call.HasField("max_tokens") else None,
    }
    row = {
        "RequestId": call.call_id,
        "UserId": user_id,
        "ProviderId": call.provider or UNKNOWN_PROVIDER,
        "ModelId": call.model or UNKNOWN_MODEL,
        "RequestType": call.request_type or DEFAULT_REQUEST_TYPE,
        "RequestText": call.prompt_text,
        "ResponseText": call.response_text,
        "InputTokens": call.input_tokens,
        "OutputTokens": call.output_tokens,
        "TotalTokens": call.total_tokens,
        "Cost": call_cost,
        "DurationMs": call.duration_ms,
        "Success": call.success,
        "ErrorMessage": _text_or_none(call.error_message),
        "Timestamp": call_time,
        "Metadata": metadata_json(metadata),
    }
    if not call.call_id:
        raise RuleError("llm_call_recorded.call_id is empty")
    key = fit(
        TOKEN_USAGE,
        {
            "UserId": user_id,
            "RequestType": call.session_query_type or DEFAULT_QUERY_TYPE,
            "IntentType": call.session_intent or DEFAULT_INTENT,
        },
    )
    usage = TokenUsageIncrement(
        user_id=key["UserId"],
        usage_date=call_time.date(),
        request_type=key["RequestType"],
        intent_type=key["IntentType"],
        requests=1,
        tokens=call.total_tokens,
        cost=call_cost.quantize(_COST, rounding=ROUND_HALF_UP),
        first_at=at,
        at=at,
    )
    return [RowInsert(LLM_USAGE, fit(LLM_USAGE, row)), usage]


def session_completed(event: events_pb2.OutboxEvent, now: dt.datetime) -> list[Effect]:
    done = event.session_completed
    if done.status not in SESSION_STATUS_NAMES:
        raise RuleError(f"session_completed.status is unknown: {done.status}")
    at = occurred_at(event, now)
    completed = done.status == resources_pb2.SESSION_STATUS_COMPLETED
    overall = confidence(
        done.overall_confidence if done.HasField("overall_confidence") else None
    )
    tracking: dict[str, Any] = {
        "GeneratedSQL": _text_or_none(done.generated_sql),
        "ProcessingTimeMs": done.total_duration_ms,
        "ConfidenceScore": overall,
    }
    if not done.sql_execution_recorded:
        tracking["SQLExecutionSuccess"] = completed
        tracking["SQLExecutionError"] = (
            None if completed else _text_or_none(done.error_message)
        )
    tracking["UpdatedDate"] = at
    metadata = {
        "status": SESSION_STATUS_NAMES[done.status],
        "query_type": done.query_type or DEFAULT_QUERY_TYPE,
        "total_duration_ms": done.total_duration_ms,
        "generated_sql": done.generated_sql or None,
        "api_call_count": done.api_call_count,
    }
    trace = {
        "EndTime": timestamp(done, "end_time") or at,
        "OverallConfidence": overall,
        "TotalTokens": done.total_tokens,
        "Success": completed,
        "ErrorMessage": _text_or_none(done.error_message),
        "Metadata": metadata_json(metadata),
        "UpdatedAt": at,
    }
    return [
        RowUpdate(PST, "SessionId", event.session_id, fit(PST, tracking)),
        RowUpdate(TRACES, "TraceId", trace_id(event.session_id), fit(TRACES, trace)),
    ]


RULES = {
    "session_started": session_started,
    "step_finished": step_finished,
    "llm_call_recorded": llm_call_recorded,
    "session_completed": session_completed,
}


def effects_of(event: events_pb2.OutboxEvent, now: dt.datetime) -> list[Effect]:
    """The legacy effects of one event, by the rule of its payload type."""
    kind = event.WhichOneof("payload")
    if kind is None:
        raise RuleError("outbox event has no payload")
    return RULES[kind](event, now)


def decode(payload: bytes, event_type: str) -> events_pb2.OutboxEvent:
    """Parses a stored payload; a corrupt one is a RuleError (the event is poison)."""
    event = events_pb2.OutboxEvent()
    try:
        event.ParseFromString(payload)
    except Exception as error:
        raise RuleError(f"payload does not parse: {type(error).__name__}") from None
    kind = event.WhichOneof("payload")
    if kind != event_type:
        raise RuleError(f"payload is {kind or 'empty'}, event_type says {event_type}")
    return event
