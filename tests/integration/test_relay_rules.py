"""Every legacy rule and every column, through the relay, on every engine
pair: expected rows are written out in full, placeholders and cutting included."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from outbox_relay.relay import Relay
from outbox_relay.rules import legacy_id, token_usage_id
from processflow.v1 import resources_pb2
from tests.support.outbox import BASE_TIME, SessionEvents, timestamp, write_events
from tests.support.relay import TARGETS, Target, legacy_rows, make_target

T0 = BASE_TIME
MS = dt.timedelta(milliseconds=1)


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Target:
    return make_target(request, request.param)


def _events() -> list[Any]:
    a = SessionEvents("rules-a", user_id="alice", query_type="reporting", at=T0)
    b = SessionEvents(
        "rules-b", user_id="", query_type="", at=T0 + dt.timedelta(days=1)
    )
    return [
        a.started(  # at T0+10ms
            query="q" * 2500,
            intent="",
            domain="",
            template="",
            tables_retrieved=["t" * 600, "u" * 600],
            start_time=timestamp(T0),
        ),
        a.step(  # at T0+20ms: a prompt-building child by the catalog, no start time
            "s-ctx",
            "context-gathering",
            name="Context Gathering",
            step_order=6,
            start_time=None,
            end_time=timestamp(T0 + 15 * MS),
            confidence=0.87654,
            tokens_used=12,
            output_data="ctx",
            metadata_json='{"k":1}',
        ),
        a.step("s-auth", "auth", name="Authentication & Authorization"),  # T0+30ms
        a.step(  # T0+40ms
            "s-prompt",
            "prompt-building",
            name="P" * 250,
            step_order=6,
            start_time=timestamp(T0 + 31 * MS),
            end_time=timestamp(T0 + 39 * MS),
            output_data="FINAL PROMPT",
        ),
        a.llm_call(  # T0+50ms
            "call-a1",
            provider="",
            model="",
            request_type="",
            prompt_text="",
            response_text="",
            input_tokens=7,
            output_tokens=3,
            total_tokens=10,
            cost_usd="0.00123456",
            duration_ms=321,
            success=False,
            error_message="e" * 1500,
            step_id="s-prompt",
            temperature=0.2,
            max_tokens=500,
            call_time=timestamp(T0 + 45 * MS),
            session_query_type="reporting",
            session_intent="",
        ),
        a.llm_call(  # T0+60ms, same TokenUsageAnalytics key
            "call-a2",
            total_tokens=30,
            cost_usd="0.00200000",
            call_time=timestamp(T0 + 55 * MS),
            session_query_type="reporting",
            session_intent="",
        ),
        a.step(  # T0+70ms
            "s-exec",
            "sql-execution",
            status=resources_pb2.STEP_STATUS_ERROR,
            error_message="x" * 2500,
        ),
        a.step(  # T0+80ms: a child by its actual parent, not in the catalog
            "s-custom",
            "my-custom-step",
            parent_step_type="prompt-building",
            name="Custom",
            step_order=61,
            status=resources_pb2.STEP_STATUS_SKIPPED,
            start_time=None,
            end_time=None,
            error_message="not needed",
        ),
        a.completed(  # T0+90ms
            status=resources_pb2.SESSION_STATUS_ERROR,
            end_time=timestamp(T0 + 90 * MS),
            total_duration_ms=90,
            generated_sql="",
            error_message="boom",
            query_type="reporting",
            total_tokens=40,
            api_call_count=2,
            sql_execution_recorded=True,
        ),
        b.started(  # T1+10ms
            query="What?",
            intent="lookup",
            domain="sales",
            template="tpl-1",
            start_time=timestamp(T0 + dt.timedelta(days=1)),
        ),
        b.llm_call(  # T1+20ms
            "call-b1",
            total_tokens=5,
            cost_usd="0.1",
            call_time=timestamp(T0 + dt.timedelta(days=1, milliseconds=20)),
            session_query_type="",
            session_intent="",
        ),
        b.completed(  # T1+30ms
            status=resources_pb2.SESSION_STATUS_COMPLETED,
            end_time=timestamp(T0 + dt.timedelta(days=1, milliseconds=30)),
            total_duration_ms=30,
            generated_sql="SELECT 42",
            error_message="",
            overall_confidence=0.95,
            query_type="",
            total_tokens=5,
            api_call_count=1,
            sql_execution_recorded=False,
        ),
    ]


def _without(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in names} for row in rows]


# One event per batch takes the UPDATE path of TokenUsageAnalytics for the
# second call; one batch for everything merges the calls and runs the
# updates in rounds.
@pytest.mark.parametrize("batch_size", [1, 100])
def test_every_rule_fills_every_column(target: Target, batch_size: int) -> None:
    events = _events()
    relay = Relay(target.settings(batch_size=batch_size))
    try:
        write_events(relay.outbox_engine, events)
        while relay.run_once():
            pass
    finally:
        relay.close()
    url = target.legacy_url
    t1 = T0 + dt.timedelta(days=1)

    assert _without(legacy_rows(url, "PromptSuccessTracking", "SessionId"), "Id") == [
        {
            "SessionId": "rules-a",
            "UserId": "alice",
            "UserQuestion": "q" * 2000,
            "GeneratedPrompt": "FINAL PROMPT",
            "TemplateUsed": None,
            "IntentClassified": "unknown",
            "DomainClassified": "unknown",
            "TablesRetrieved": ("t" * 600 + "," + "u" * 600)[:1000],
            "GeneratedSQL": None,
            "SQLExecutionSuccess": False,
            "SQLExecutionError": "x" * 2000,
            "UserFeedbackRating": None,
            "UserFeedbackComments": None,
            "ProcessingTimeMs": 90,
            "ConfidenceScore": Decimal("0.0000"),
            "CreatedDate": T0,
            "UpdatedDate": T0 + 90 * MS,
        },
        {
            "SessionId": "rules-b",
            "UserId": "unknown",
            "UserQuestion": "What?",
            "GeneratedPrompt": "",
            "TemplateUsed": "tpl-1",
            "IntentClassified": "lookup",
            "DomainClassified": "sales",
            "TablesRetrieved": None,
            "GeneratedSQL": "SELECT 42",
            "SQLExecutionSuccess": True,
            "SQLExecutionError": None,
            "UserFeedbackRating": None,
            "UserFeedbackComments": None,
            "ProcessingTimeMs": 30,
            "ConfidenceScore": Decimal("0.9500"),
            "CreatedDate": t1,
            "UpdatedDate": t1 + 30 * MS,
        },
    ]

    assert legacy_rows(url, "PromptConstructionTraces", "TraceId") == [
        {
            "Id": legacy_id("PromptConstructionTraces", "trace-rules-a"),
            "TraceId": "trace-rules-a",
            "UserId": "alice",
            "UserQuestion": "q" * 2500,
            "IntentType": "reporting",
            "StartTime": T0,
            "EndTime": T0 + 90 * MS,
            "OverallConfidence": Decimal("0.0000"),
            "TotalTokens": 40,
            "FinalPrompt": "FINAL PROMPT",
            "Success": False,
            "ErrorMessage": "boom",
            "Metadata": '{"status":"error","query_type":"reporting",'
            '"total_duration_ms":90,"generated_sql":null,"api_call_count":2}',
            "CreatedAt": T0 + 10 * MS,
            "UpdatedAt": T0 + 90 * MS,
        },
        {
            "Id": legacy_id("PromptConstructionTraces", "trace-rules-b"),
            "TraceId": "trace-rules-b",
            "UserId": "unknown",
            "UserQuestion": "What?",
            "IntentType": "lookup",
            "StartTime": t1,
            "EndTime": t1 + 30 * MS,
            "OverallConfidence": Decimal("0.9500"),
            "TotalTokens": 5,
            "FinalPrompt": None,
            "Success": True,
            "ErrorMessage": None,
            "Metadata": '{"status":"completed","query_type":"enhanced",'
            '"total_duration_ms":30,"generated_sql":"SELECT 42","api_call_count":1}',
            "CreatedAt": t1 + 10 * MS,
            "UpdatedAt": t1 + 30 * MS,
        },
    ]

    assert legacy_rows(url, "PromptConstructionSteps", "CreatedAt") == [
        {
            "Id": legacy_id("PromptConstructionSteps", "rules-a", "s-ctx"),
            "TraceId": "trace-rules-a",
            "StepName": "Context Gathering",
            "StepOrder": 6,
            "StartTime": T0 + 15 * MS,
            "EndTime": T0 + 15 * MS,
            "Success": True,
            "TokensAdded": 12,
            "Confidence": Decimal("0.8765"),
            "Content": "ctx",
            "Details": '{"k":1}',
            "ErrorMessage": None,
            "CreatedAt": T0 + 20 * MS,
        },
        {
            "Id": legacy_id("PromptConstructionSteps", "rules-a", "s-prompt"),
            "TraceId": "trace-rules-a",
            "StepName": "P" * 200,
            "StepOrder": 6,
            "StartTime": T0 + 31 * MS,
            "EndTime": T0 + 39 * MS,
            "Success": True,
            "TokensAdded": 0,
            "Confidence": Decimal("0.0000"),
            "Content": "FINAL PROMPT",
            "Details": None,
            "ErrorMessage": None,
            "CreatedAt": T0 + 40 * MS,
        },
        {
            "Id": legacy_id("PromptConstructionSteps", "rules-a", "s-custom"),
            "TraceId": "trace-rules-a",
            "StepName": "Custom",
            "StepOrder": 61,
            "StartTime": T0 + 80 * MS,
            "EndTime": None,
            "Success": False,
            "TokensAdded": 0,
            "Confidence": Decimal("0.0000"),
            "Content": None,
            "Details": None,
            "ErrorMessage": "not needed",
            "CreatedAt": T0 + 80 * MS,
        },
    ]

    assert _without(legacy_rows(url, "LLMUsageLogs", "RequestId"), "Id") == [
        {
            "RequestId": "call-a1",
            "UserId": "alice",
            "ProviderId": "unknown-provider",
            "ModelId": "unknown-model",
            "RequestType": "sql_generation",
            "RequestText": "",
            "ResponseText": "",
            "InputTokens": 7,
            "OutputTokens": 3,
            "TotalTokens": 10,
            "Cost": Decimal("0.00123456"),
            "DurationMs": 321,
            "Success": False,
            "ErrorMessage": "e" * 1000,
            "Timestamp": T0 + 45 * MS,
            "Metadata": '{"session_id":"rules-a","step_id":"s-prompt",'
            '"temperature":0.2,"max_tokens":500}',
        },
        {
            "RequestId": "call-a2",
            "UserId": "alice",
            "ProviderId": "openai",
            "ModelId": "gpt-4o",
            "RequestType": "sql_generation",
            "RequestText": "prompt",
            "ResponseText": "SELECT 1",
            "InputTokens": 100,
            "OutputTokens": 20,
            "TotalTokens": 30,
            "Cost": Decimal("0.00200000"),
            "DurationMs": 850,
            "Success": True,
            "ErrorMessage": None,
            "Timestamp": T0 + 55 * MS,
            "Metadata": '{"session_id":"rules-a","step_id":null,'
            '"temperature":null,"max_tokens":null}',
        },
        {
            "RequestId": "call-b1",
            "UserId": "unknown",
            "ProviderId": "openai",
            "ModelId": "gpt-4o",
            "RequestType": "sql_generation",
            "RequestText": "prompt",
            "ResponseText": "SELECT 1",
            "InputTokens": 100,
            "OutputTokens": 20,
            "TotalTokens": 5,
            "Cost": Decimal("0.10000000"),
            "DurationMs": 850,
            "Success": True,
            "ErrorMessage": None,
            "Timestamp": t1 + 20 * MS,
            "Metadata": '{"session_id":"rules-b","step_id":null,'
            '"temperature":null,"max_tokens":null}',
        },
    ]

    assert legacy_rows(url, "TokenUsageAnalytics", "Date") == [
        {
            "Id": token_usage_id("alice", T0.date(), "reporting", "sql_generation"),
            "UserId": "alice",
            "Date": T0.date(),
            "RequestType": "reporting",
            "IntentType": "sql_generation",
            "TotalRequests": 2,
            "TotalTokensUsed": 40,
            "TotalCost": Decimal("0.003235"),
            "AverageTokensPerRequest": Decimal("20.00"),
            "AverageCostPerRequest": Decimal("0.001618"),
            "CreatedAt": T0 + 50 * MS,
            "UpdatedAt": T0 + 60 * MS,
        },
        {
            "Id": token_usage_id("unknown", t1.date(), "enhanced", "sql_generation"),
            "UserId": "unknown",
            "Date": t1.date(),
            "RequestType": "enhanced",
            "IntentType": "sql_generation",
            "TotalRequests": 1,
            "TotalTokensUsed": 5,
            "TotalCost": Decimal("0.100000"),
            "AverageTokensPerRequest": Decimal("5.00"),
            "AverageCostPerRequest": Decimal("0.100000"),
            "CreatedAt": t1 + 20 * MS,
            "UpdatedAt": t1 + 20 * MS,
        },
    ]

    assert legacy_rows(url, "processflow_token_usage_contributions", "usage_date") == [
        {
            "user_id": "alice",
            "usage_date": T0.date(),
            "request_type": "reporting",
            "intent_type": "sql_generation",
            "total_requests": 2,
            "total_tokens": 40,
            "total_cost": Decimal("0.003235"),
            "updated_at": T0 + 60 * MS,
        },
        {
            "user_id": "unknown",
            "usage_date": t1.date(),
            "request_type": "enhanced",
            "intent_type": "sql_generation",
            "total_requests": 1,
            "total_tokens": 5,
            "total_cost": Decimal("0.100000"),
            "updated_at": t1 + 20 * MS,
        },
    ]
    ledger = legacy_rows(url, "processflow_applied_events", "session_id", "sequence")
    assert [(r["session_id"], r["sequence"], r["skipped_sinks"]) for r in ledger] == [
        *(("rules-a", n, "") for n in range(1, 10)),
        *(("rules-b", n, "") for n in range(1, 4)),
    ]
