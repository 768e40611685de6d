"""The legacy inserts of one outbox event in plain SQL (LEGACY.md §4), with
the applied-event ledger row that makes a redelivery harmless.

This is the work each baseline job does; it mirrors the relay's rules
closely enough that both sides write the same rows per event.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import psycopg

from processflow.v1 import events_pb2, resources_pb2

_PROMPT_CODES = frozenset({"prompt-building", "context-gathering", "prompt-assembly"})


def _when(stamp: object) -> dt.datetime:
    return stamp.ToDatetime()  # type: ignore[attr-defined, no-any-return]


async def apply_event(
    connection: psycopg.AsyncConnection[object], payload: bytes
) -> bool:
    """Applies the event in the caller's transaction; False when already applied."""
    event = events_pb2.OutboxEvent.FromString(payload)
    kind = event.WhichOneof("payload") or ""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cursor = await connection.execute(
        'INSERT INTO processflow_applied_events (event_id, session_id, "sequence", '
        "event_type, applied_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (event.event_id, event.session_id, event.sequence, kind, now),
    )
    if cursor.rowcount == 0:
        return False
    trace_id = "trace-" + event.session_id
    if kind == "session_started":
        started = event.session_started
        await connection.execute(
            'INSERT INTO "PromptSuccessTracking" ("SessionId", "UserId", '
            '"UserQuestion", "GeneratedPrompt", "TemplateUsed", "IntentClassified", '
            '"DomainClassified", '
            '"TablesRetrieved", "ProcessingTimeMs", "ConfidenceScore", "CreatedDate") '
            "VALUES (%s, %s, %s, '', %s, %s, %s, %s, 0, 0, %s)",
            (
                event.session_id,
                started.user_id,
                started.query[:2000],
                started.template or None,
                started.intent or "unknown",
                started.domain or "unknown",
                ",".join(started.tables_retrieved)[:1000],
                _when(started.start_time),
            ),
        )
        await connection.execute(
            'INSERT INTO "PromptConstructionTraces" ("Id", "TraceId", "UserId", '
            '"UserQuestion", "IntentType", "StartTime", "Success") '
            "VALUES (%s, %s, %s, %s, %s, %s, false)",
            (
                trace_id,
                trace_id,
                started.user_id,
                started.query,
                started.intent or started.query_type,
                _when(started.start_time),
            ),
        )
    elif kind == "step_finished":
        step = event.step_finished
        completed = step.status == resources_pb2.STEP_STATUS_COMPLETED
        if (
            step.step_type in _PROMPT_CODES
            or step.parent_step_type == "prompt-building"
        ):
            await connection.execute(
                'INSERT INTO "PromptConstructionSteps" ("Id", "TraceId", "StepName", '
                '"StepOrder", "StartTime", "EndTime", "Success", "TokensAdded", '
                '"Confidence", "Content", "Details", "ErrorMessage") '
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    f"{trace_id}-{step.step_id}",
                    trace_id,
                    step.name,
                    step.step_order,
                    _when(step.start_time),
                    _when(step.end_time),
                    completed,
                    step.tokens_used,
                    step.confidence,
                    step.output_data,
                    step.metadata_json or None,
                    step.error_message or None,
                ),
            )
            if step.step_type == "prompt-building" and completed:
                await connection.execute(
                    'UPDATE "PromptSuccessTracking" SET "GeneratedPrompt" = %s '
                    'WHERE "SessionId" = %s',
                    (step.output_data, event.session_id),
                )
                await connection.execute(
                    'UPDATE "PromptConstructionTraces" SET "FinalPrompt" = %s '
                    'WHERE "TraceId" = %s',
                    (step.output_data, trace_id),
                )
        elif step.step_type == "sql-execution":
            await connection.execute(
                'UPDATE "PromptSuccessTracking" SET "SQLExecutionSuccess" = %s, '
                '"SQLExecutionError" = %s, "UpdatedDate" = %s WHERE "SessionId" = %s',
                (completed, step.error_message[:2000] or None, now, event.session_id),
            )
    elif kind == "llm_call_recorded":
        call = event.llm_call_recorded
        cost = Decimal(call.cost_usd or "0")
        await connection.execute(
            'INSERT INTO "LLMUsageLogs" ("RequestId", "UserId", "ProviderId", '
            '"ModelId", "RequestType", "RequestText", "ResponseText", "InputTokens", '
            '"OutputTokens", "TotalTokens", "Cost", "DurationMs", "Success", '
            '"ErrorMessage", "Timestamp", "Metadata") '
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                call.call_id,
                call.user_id,
                call.provider or "unknown-provider",
                call.model or "unknown-model",
                call.request_type or "sql_generation",
                call.prompt_text,
                call.response_text,
                call.input_tokens,
                call.output_tokens,
                call.total_tokens,
                cost,
                call.duration_ms,
                call.success,
                call.error_message[:1000] or None,
                _when(call.call_time),
                json.dumps({"session_id": event.session_id, "step_id": call.step_id}),
            ),
        )
        await connection.execute(
            'INSERT INTO "TokenUsageAnalytics" AS t ("Id", "UserId", "Date", '
            '"RequestType", "IntentType", "TotalRequests", "TotalTokensUsed", '
            '"TotalCost", "AverageTokensPerRequest", "AverageCostPerRequest", '
            '"UpdatedAt") VALUES (md5(%s), %s, %s, %s, %s, 1, %s, %s, %s, %s, %s) '
            'ON CONFLICT ("UserId", "Date", "RequestType", "IntentType") DO UPDATE SET '
            '"TotalRequests" = t."TotalRequests" + 1, '
            '"TotalTokensUsed" = t."TotalTokensUsed" + EXCLUDED."TotalTokensUsed", '
            '"TotalCost" = t."TotalCost" + EXCLUDED."TotalCost", '
            '"AverageTokensPerRequest" = (t."TotalTokensUsed" + '
            'EXCLUDED."TotalTokensUsed")::numeric / (t."TotalRequests" + 1), '
            '"AverageCostPerRequest" = (t."TotalCost" + EXCLUDED."TotalCost") '
            '/ (t."TotalRequests" + 1), "UpdatedAt" = EXCLUDED."UpdatedAt"',
            (
                f"{call.user_id}|{_when(call.call_time).date()}",
                call.user_id,
                _when(call.call_time).date(),
                call.session_query_type,
                call.session_intent or "sql_generation",
                call.total_tokens,
                cost,
                call.total_tokens,
                cost,
                now,
            ),
        )
    elif kind == "session_completed":
        done = event.session_completed
        completed = done.status == resources_pb2.SESSION_STATUS_COMPLETED
        await connection.execute(
            'UPDATE "PromptSuccessTracking" SET "GeneratedSQL" = %s, '
            '"ProcessingTimeMs" = %s, "ConfidenceScore" = %s, "UpdatedDate" = %s '
            'WHERE "SessionId" = %s',
            (
                done.generated_sql,
                done.total_duration_ms,
                done.overall_confidence,
                now,
                event.session_id,
            ),
        )
        await connection.execute(
            'UPDATE "PromptConstructionTraces" SET "EndTime" = %s, '
            '"OverallConfidence" = %s, "TotalTokens" = %s, "Success" = %s, '
            '"ErrorMessage" = %s, "Metadata" = %s, "UpdatedAt" = %s '
            'WHERE "TraceId" = %s',
            (
                _when(done.end_time),
                done.overall_confidence,
                done.total_tokens,
                completed,
                done.error_message or None,
                json.dumps({"status": "completed" if completed else "error"}),
                now,
                trace_id,
            ),
        )
    return True
