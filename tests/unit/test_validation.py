"""Every validation rule refuses bad input and names the field by its path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import validation as v
from server.errors import InvalidArgument

LIMITS = v.Limits(max_text_chars=100, max_logs_per_call=3, max_ingest_operations=4)
BIG_STRUCT = struct_pb2.Struct()
BIG_STRUCT.update({"blob": "x" * 70_000})
BAD_TIME = timestamp_pb2.Timestamp(seconds=v.MAX_SECONDS + 1)


def start(**fields: Any) -> pb.StartSessionRequest:
    return pb.StartSessionRequest(**{"user_id": "u", "query": "q", **fields})


def step(**fields: Any) -> pb.RecordStepRequest:
    return pb.RecordStepRequest(**{"session_id": "s", "step_id": "a", **fields})


def call(**fields: Any) -> pb.RecordLlmCallRequest:
    return pb.RecordLlmCallRequest(**{"session_id": "s", **fields})


def complete(**fields: Any) -> pb.CompleteSessionRequest:
    return pb.CompleteSessionRequest(
        **{"session_id": "s", "status": res.SESSION_STATUS_COMPLETED, **fields}
    )


def logs(*entries: pb.LogInput) -> pb.AppendLogsRequest:
    return pb.AppendLogsRequest(session_id="s", logs=list(entries))


def fields_of(validator: Callable[..., list[Any]], request: Any) -> list[str]:
    if validator in (v.validate_list_sessions,):
        return [x.field for x in validator(request)]
    return [x.field for x in validator(request, LIMITS)]


CASES: list[tuple[str, Callable[..., list[Any]], Any, str]] = [
    (
        "request id syntax",
        v.validate_start_session,
        start(request_id="a b"),
        "request_id",
    ),
    (
        "request id length",
        v.validate_start_session,
        start(request_id="a" * 129),
        "request_id",
    ),
    (
        "session id syntax",
        v.validate_start_session,
        start(session_id="x/y"),
        "session_id",
    ),
    ("user required", v.validate_start_session, start(user_id=""), "user_id"),
    ("user length", v.validate_start_session, start(user_id="u" * 257), "user_id"),
    ("query required", v.validate_start_session, start(query=""), "query"),
    ("query length", v.validate_start_session, start(query="q" * 32_769), "query"),
    (
        "query type length",
        v.validate_start_session,
        start(query_type="t" * 101),
        "query_type",
    ),
    (
        "conversation length",
        v.validate_start_session,
        start(conversation_id="c" * 129),
        "conversation_id",
    ),
    (
        "message length",
        v.validate_start_session,
        start(message_id="m" * 129),
        "message_id",
    ),
    ("intent length", v.validate_start_session, start(intent="i" * 51), "intent"),
    ("domain length", v.validate_start_session, start(domain="d" * 51), "domain"),
    (
        "template length",
        v.validate_start_session,
        start(template="t" * 101),
        "template",
    ),
    (
        "too many tables",
        v.validate_start_session,
        start(tables_retrieved=["t"] * 201),
        "tables_retrieved",
    ),
    (
        "table name length",
        v.validate_start_session,
        start(tables_retrieved=["ok", "t" * 129]),
        "tables_retrieved[1]",
    ),
    (
        "empty table name",
        v.validate_start_session,
        start(tables_retrieved=[""]),
        "tables_retrieved[0]",
    ),
    (
        "session metadata size",
        v.validate_start_session,
        start(metadata=BIG_STRUCT),
        "metadata",
    ),
    (
        "start time range",
        v.validate_start_session,
        start(start_time=BAD_TIME),
        "start_time",
    ),
    (
        "step session required",
        v.validate_record_step,
        step(session_id=""),
        "session_id",
    ),
    ("step id required", v.validate_record_step, step(step_id=""), "step_id"),
    ("step id syntax", v.validate_record_step, step(step_id="a b"), "step_id"),
    ("step type length", v.validate_record_step, step(step_type="x" * 65), "step_type"),
    (
        "parent syntax",
        v.validate_record_step,
        step(parent_step_id="p q"),
        "parent_step_id",
    ),
    ("own parent", v.validate_record_step, step(parent_step_id="a"), "parent_step_id"),
    ("name length", v.validate_record_step, step(name="n" * 201), "name"),
    (
        "description length",
        v.validate_record_step,
        step(description="d" * 2001),
        "description",
    ),
    ("unknown step status", v.validate_record_step, step(status=99), "status"),
    (
        "end before start",
        v.validate_record_step,
        step(
            start_time=timestamp_pb2.Timestamp(seconds=10),
            end_time=timestamp_pb2.Timestamp(seconds=9),
        ),
        "end_time",
    ),
    ("confidence high", v.validate_record_step, step(confidence=1.01), "confidence"),
    ("confidence low", v.validate_record_step, step(confidence=-0.1), "confidence"),
    (
        "confidence nan",
        v.validate_record_step,
        step(confidence=float("nan")),
        "confidence",
    ),
    (
        "input text limit",
        v.validate_record_step,
        step(input_data="x" * 101),
        "input_data",
    ),
    (
        "output text limit",
        v.validate_record_step,
        step(output_data="x" * 101),
        "output_data",
    ),
    (
        "step error length",
        v.validate_record_step,
        step(error_message="e" * 65_537),
        "error_message",
    ),
    (
        "step metadata size",
        v.validate_record_step,
        step(metadata=BIG_STRUCT),
        "metadata",
    ),
    ("negative tokens", v.validate_record_step, step(tokens_used=-1), "tokens_used"),
    ("negative retries", v.validate_record_step, step(retry_count=-1), "retry_count"),
    (
        "too many step logs",
        v.validate_record_step,
        step(logs=[pb.LogInput(message="m")] * 4),
        "logs",
    ),
    (
        "step log message",
        v.validate_record_step,
        step(logs=[pb.LogInput(message="m"), pb.LogInput()]),
        "logs[1].message",
    ),
    ("logs required", v.validate_append_logs, logs(), "logs"),
    (
        "logs session required",
        v.validate_append_logs,
        pb.AppendLogsRequest(logs=[pb.LogInput(message="m")]),
        "session_id",
    ),
    (
        "log message length",
        v.validate_append_logs,
        logs(pb.LogInput(message="m" * 8193)),
        "logs[0].message",
    ),
    (
        "log level unknown",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", level=42)),
        "logs[0].level",
    ),
    (
        "log step syntax",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", step_id="a b")),
        "logs[0].step_id",
    ),
    (
        "log details size",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", details=BIG_STRUCT)),
        "logs[0].details",
    ),
    (
        "log exception length",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", exception="e" * 65_537)),
        "logs[0].exception",
    ),
    (
        "log source length",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", source="s" * 257)),
        "logs[0].source",
    ),
    (
        "log timestamp",
        v.validate_append_logs,
        logs(pb.LogInput(message="m", timestamp=timestamp_pb2.Timestamp(nanos=-1))),
        "logs[0].timestamp",
    ),
    (
        "too many logs",
        v.validate_append_logs,
        logs(*[pb.LogInput(message="m")] * 4),
        "logs",
    ),
    (
        "call session required",
        v.validate_record_llm_call,
        call(session_id=""),
        "session_id",
    ),
    ("call id syntax", v.validate_record_llm_call, call(call_id="c c"), "call_id"),
    ("call step syntax", v.validate_record_llm_call, call(step_id="s s"), "step_id"),
    (
        "provider length",
        v.validate_record_llm_call,
        call(provider="p" * 51),
        "provider",
    ),
    ("model length", v.validate_record_llm_call, call(model="m" * 101), "model"),
    (
        "request type length",
        v.validate_record_llm_call,
        call(request_type="r" * 51),
        "request_type",
    ),
    (
        "prompt limit",
        v.validate_record_llm_call,
        call(prompt_text="p" * 101),
        "prompt_text",
    ),
    (
        "response limit",
        v.validate_record_llm_call,
        call(response_text="r" * 101),
        "response_text",
    ),
    (
        "input tokens negative",
        v.validate_record_llm_call,
        call(input_tokens=-1),
        "input_tokens",
    ),
    (
        "output tokens too many",
        v.validate_record_llm_call,
        call(output_tokens=100_000_001),
        "output_tokens",
    ),
    ("cost negative", v.validate_record_llm_call, call(cost_usd=-0.01), "cost_usd"),
    ("cost too high", v.validate_record_llm_call, call(cost_usd=1_000_001), "cost_usd"),
    (
        "duration negative",
        v.validate_record_llm_call,
        call(duration_ms=-5),
        "duration_ms",
    ),
    (
        "call error length",
        v.validate_record_llm_call,
        call(error_message="e" * 65_537),
        "error_message",
    ),
    (
        "temperature high",
        v.validate_record_llm_call,
        call(temperature=2.5),
        "temperature",
    ),
    (
        "temperature negative",
        v.validate_record_llm_call,
        call(temperature=-0.1),
        "temperature",
    ),
    ("max tokens zero", v.validate_record_llm_call, call(max_tokens=0), "max_tokens"),
    ("call confidence", v.validate_record_llm_call, call(confidence=2.0), "confidence"),
    ("call time", v.validate_record_llm_call, call(call_time=BAD_TIME), "call_time"),
    (
        "complete session required",
        v.validate_complete_session,
        complete(session_id=""),
        "session_id",
    ),
    (
        "complete status required",
        v.validate_complete_session,
        complete(status=0),
        "status",
    ),
    (
        "complete status running",
        v.validate_complete_session,
        complete(status=res.SESSION_STATUS_RUNNING),
        "status",
    ),
    (
        "complete status unknown",
        v.validate_complete_session,
        complete(status=17),
        "status",
    ),
    (
        "generated sql limit",
        v.validate_complete_session,
        complete(generated_sql="s" * 101),
        "generated_sql",
    ),
    (
        "execution result limit",
        v.validate_complete_session,
        complete(execution_result="r" * 101),
        "execution_result",
    ),
    (
        "complete error length",
        v.validate_complete_session,
        complete(error_message="e" * 65_537),
        "error_message",
    ),
    (
        "overall confidence",
        v.validate_complete_session,
        complete(overall_confidence=1.5),
        "overall_confidence",
    ),
    (
        "complete end time",
        v.validate_complete_session,
        complete(end_time=BAD_TIME),
        "end_time",
    ),
    (
        "list page size negative",
        v.validate_list_sessions,
        pb.ListSessionsRequest(page_size=-1),
        "page_size",
    ),
    (
        "list page size too big",
        v.validate_list_sessions,
        pb.ListSessionsRequest(page_size=1001),
        "page_size",
    ),
    (
        "list status unknown",
        v.validate_list_sessions,
        pb.ListSessionsRequest(status=9),
        "status",
    ),
    (
        "list time order",
        v.validate_list_sessions,
        pb.ListSessionsRequest(
            start_time_from=timestamp_pb2.Timestamp(seconds=5),
            start_time_to=timestamp_pb2.Timestamp(seconds=4),
        ),
        "start_time_to",
    ),
]


@pytest.mark.parametrize(
    ("validator", "request_", "field"),
    [pytest.param(c[1], c[2], c[3], id=c[0]) for c in CASES],
)
def test_rule_names_the_field(
    validator: Callable[..., list[Any]], request_: Any, field: str
) -> None:
    assert fields_of(validator, request_) == [field]


@pytest.mark.parametrize(
    ("validator", "request_"),
    [
        (
            v.validate_start_session,
            start(session_id="s-1.a:b_c", tables_retrieved=["t"]),
        ),
        (
            v.validate_record_step,
            step(confidence=1.0, status=res.STEP_STATUS_COMPLETED),
        ),
        (v.validate_append_logs, logs(pb.LogInput(message="m", step_id="a"))),
        (v.validate_record_llm_call, call(temperature=2.0, max_tokens=1, cost_usd=0.0)),
        (v.validate_complete_session, complete(status=res.SESSION_STATUS_CANCELLED)),
        (v.validate_list_sessions, pb.ListSessionsRequest(page_size=1000)),
    ],
)
def test_valid_requests_pass(
    validator: Callable[..., list[Any]], request_: Any
) -> None:
    assert fields_of(validator, request_) == []


def test_every_bad_field_is_named_at_once() -> None:
    request = pb.RecordStepRequest(
        step_id="a b", confidence=3, logs=[pb.LogInput(), pb.LogInput(message="ok")]
    )
    assert fields_of(v.validate_record_step, request) == [
        "session_id",
        "step_id",
        "confidence",
        "logs[0].message",
    ]


def test_ingest_paths_name_the_operation() -> None:
    request = pb.IngestRequest(
        operations=[
            pb.IngestOperation(start_session=start()),
            pb.IngestOperation(record_step=step(confidence=1.5)),
            pb.IngestOperation(),
            pb.IngestOperation(
                append_logs=logs(pb.LogInput(), pb.LogInput(message="m"))
            ),
        ]
    )
    assert [x.field for x in v.validate_ingest(request, LIMITS)] == [
        "operations[1].record_step.confidence",
        "operations[2]",
        "operations[3].append_logs.logs[0].message",
    ]


def test_ingest_operation_count() -> None:
    empty = pb.IngestRequest()
    too_many = pb.IngestRequest(
        operations=[pb.IngestOperation(start_session=start())] * 5
    )
    assert [x.field for x in v.validate_ingest(empty, LIMITS)] == ["operations"]
    assert [x.field for x in v.validate_ingest(too_many, LIMITS)] == ["operations"]


def test_session_id_rule() -> None:
    assert [x.field for x in v.validate_session_id("")] == ["session_id"]
    assert [x.field for x in v.validate_session_id("a" * 129)] == ["session_id"]
    assert v.validate_session_id("ok") == []


def test_check_raises_with_every_violation() -> None:
    with pytest.raises(InvalidArgument) as raised:
        v.check(v.validate_start_session(pb.StartSessionRequest(), LIMITS))
    assert [x.field for x in raised.value.violations] == ["user_id", "query"]
    v.check([])
