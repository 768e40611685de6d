"""Realistic traffic for ``processflow demo``: whole pipeline runs recorded
through the real API.

Each run walks the step catalog (sub-steps included) with plausible
durations, confidences and tokens, makes one or two LLM calls on a few
providers and models, and sometimes fails: a SQL execution that times out or
names a wrong column, or a model call that is rate limited. Runs start at
times spread over the past week. About a third are sent call by call
(StartSession, RecordStep, ...), the rest as one Ingest request each. The
first run is always the original system's sample session.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from processflow.client.messages import new_request_id, timestamp
from processflow.demo_data import (
    MODELS,
    QUESTIONS,
    SAMPLE,
    SAMPLE_USER,
    SQL_ERRORS,
    USERS,
    Question,
)
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import resources_pb2 as res


@dataclass
class Summary:
    sessions: int = 0
    steps: int = 0
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    error_sessions: int = 0
    failed_sql: int = 0
    sent_by_ingest: int = 0
    sent_by_calls: int = 0
    sample_session_id: str = ""
    session_ids: list[str] = field(default_factory=list)


class RunPlan:
    """The operations of one pipeline run, on a simulated clock."""

    def __init__(self, rng: random.Random, session_id: str, start: dt.datetime) -> None:
        self.rng = rng
        self.session_id = session_id
        self.clock = start
        self.operations: list[api.IngestOperation] = []
        self.steps = 0
        self.calls = 0
        self.tokens = 0
        self.cost = 0.0

    def advance(self, low_ms: int, high_ms: int) -> dt.datetime:
        self.clock += dt.timedelta(milliseconds=self.rng.randint(low_ms, high_ms))
        return self.clock

    def step(
        self,
        code: str,
        parent: str = "",
        *,
        ms: tuple[int, int] = (5, 60),
        body: Callable[[str], object] | None = None,
        confidence: tuple[float, float] | None = (0.85, 0.99),
        output: str = "",
        tokens: int | None = None,
        error: str = "",
        logs: Sequence[tuple[res.LogLevel.ValueType, str]] = (),
    ) -> str:
        """Records a step that starts now, runs ``body`` (its sub-steps),
        lasts at least ``ms`` and ends completed, or in error with ``error``."""
        step_id = f"{code}-{uuid.uuid4().hex[:8]}"
        self.steps += 1
        started = self.advance(1, 5)
        self.operations.append(
            _op(
                record_step=api.RecordStepRequest(
                    request_id=new_request_id(),
                    session_id=self.session_id,
                    step_id=step_id,
                    step_type=code,
                    parent_step_id=parent,
                    status=res.STEP_STATUS_RUNNING,
                    start_time=timestamp(started),
                )
            )
        )
        if body is not None:
            body(step_id)
        ended = self.advance(*ms)
        entries = [
            api.LogInput(level=level, message=text, timestamp=timestamp(ended))
            for level, text in logs
        ]
        if error:
            entries.append(
                api.LogInput(
                    level=res.LOG_LEVEL_ERROR, message=error, timestamp=timestamp(ended)
                )
            )
        finish = api.RecordStepRequest(
            request_id=new_request_id(),
            session_id=self.session_id,
            step_id=step_id,
            status=res.STEP_STATUS_ERROR if error else res.STEP_STATUS_COMPLETED,
            end_time=timestamp(ended),
            output_data=output,
            error_message=error,
            tokens_used=tokens,
            logs=entries,
        )
        if confidence is not None and not error:
            finish.confidence = round(self.rng.uniform(*confidence), 4)
        self.operations.append(_op(record_step=finish))
        return step_id

    def llm_call(
        self, step_id: str, model: tuple[str, str, float, float], prompt: str, **kw: Any
    ) -> None:
        provider, name, input_price, output_price = model
        input_tokens = kw.pop("input_tokens", self.rng.randint(600, 2400))
        output_tokens = kw.pop("output_tokens", self.rng.randint(60, 420))
        success = kw.pop("success", True)
        if not success:
            output_tokens = 0
        call_cost = round(
            input_tokens * input_price / 1000 + output_tokens * output_price / 1000, 8
        )
        duration_ms = kw.pop("duration_ms", self.rng.randint(400, 3800))
        request_type = kw.pop("request_type", "sql_generation")
        self.calls += 1
        self.tokens += input_tokens + output_tokens
        self.cost += call_cost
        call_time = self.clock
        # The call happens within its step: the step lasts at least as long.
        self.clock += dt.timedelta(milliseconds=duration_ms)
        self.operations.append(
            _op(
                record_llm_call=api.RecordLlmCallRequest(
                    request_id=new_request_id(),
                    session_id=self.session_id,
                    step_id=step_id,
                    call_id=str(uuid.uuid4()),
                    provider=provider,
                    model=name,
                    request_type=request_type,
                    prompt_text=prompt,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cost_usd=call_cost,
                    duration_ms=duration_ms,
                    success=success,
                    temperature=0.1,
                    max_tokens=1000,
                    call_time=timestamp(call_time),
                    **kw,
                )
            )
        )


def _op(**operation: Any) -> api.IngestOperation:
    return api.IngestOperation(**operation)


def build_prompt(question: Question) -> str:
    tables = ", ".join(f"{t}(Id, ...)" for t in question.tables)
    return (
        "You are an expert T-SQL assistant. Write one query for SQL Server.\n"
        f"Schema: {tables}\n"
        f"Intent: {question.intent}; domain: {question.domain}\n"
        f"Question: {question.query}\nAnswer with SQL only."
    )


def plan_run(
    rng: random.Random,
    user: str,
    question: Question,
    start: dt.datetime,
    *,
    model: tuple[str, str, float, float],
    outcome: str = "completed",
    sample: bool = False,
) -> RunPlan:
    """One pipeline run. ``outcome``: completed, sql_error or llm_error."""
    plan = RunPlan(rng, str(uuid.uuid4()), start)
    plan.operations.append(
        _op(
            start_session=api.StartSessionRequest(
                request_id=new_request_id(),
                session_id=plan.session_id,
                user_id=user,
                query=question.query,
                query_type="enhanced",
                intent=question.intent,
                domain=question.domain,
                template=question.template,
                tables_retrieved=question.tables,
                conversation_id=f"conv-{uuid.uuid4().hex[:10]}",
                start_time=timestamp(start),
            )
        )
    )
    prompt = build_prompt(question)
    # The prompt's size in tokens, as the model will count it.
    prompt_tokens = 1250 if sample else rng.randint(600, 2400)
    info, warning = res.LOG_LEVEL_INFO, res.LOG_LEVEL_WARNING

    # Some runs ask a small model for the intent before the main call.
    classify_by_model = not sample and rng.random() < 0.4

    def classify(step_id: str) -> None:
        plan.llm_call(
            step_id,
            MODELS[2],
            f"Classify the intent of: {question.query}",
            input_tokens=rng.randint(80, 200),
            output_tokens=rng.randint(3, 12),
            duration_ms=rng.randint(150, 600),
            request_type="intent_classification",
            response_text=question.intent,
        )

    plan.step("auth", ms=(8, 40), confidence=(0.99, 1.0), logs=[(info, "token valid")])
    plan.step("request-validation", ms=(3, 20))
    plan.step(
        "semantic-analysis",
        ms=(5, 30),
        body=lambda sid: (
            plan.step(
                "intent-detection",
                sid,
                ms=(20, 120),
                output=question.intent,
                body=classify if classify_by_model else None,
            ),
            plan.step(
                "entity-extraction",
                sid,
                ms=(50, 260),
                output=", ".join(question.tables),
                confidence=(0.7, 0.97),
            ),
        ),
    )
    plan.step(
        "schema-retrieval",
        ms=(40, 400),
        output=", ".join(question.tables),
        body=lambda sid: plan.step("relationship-discovery", sid, ms=(20, 180)),
    )
    for code in question.generators:
        plan.step(code, ms=(10, 90))
    plan.step(
        "prompt-building",
        ms=(5, 30),
        output=prompt,
        tokens=prompt_tokens,
        body=lambda sid: (
            plan.step(
                "context-gathering", sid, ms=(30, 220), tokens=prompt_tokens // 2
            ),
            plan.step("prompt-assembly", sid, ms=(5, 40), output=prompt),
        ),
    )
    llm_error = outcome == "llm_error"
    llm_message = "429 Too Many Requests: rate limit reached for requests"

    def generation(sid: str) -> None:
        def request(rid: str) -> None:
            if sample:
                plan.llm_call(
                    rid,
                    model,
                    prompt,
                    input_tokens=1250,
                    output_tokens=180,
                    duration_ms=1840,
                    response_text=f"```sql\n{question.sql}\n```",
                    confidence=0.92,
                )
            elif llm_error:
                plan.llm_call(
                    rid,
                    model,
                    prompt,
                    input_tokens=prompt_tokens,
                    success=False,
                    error_message=llm_message,
                    duration_ms=rng.randint(80, 400),
                )
            else:
                plan.llm_call(
                    rid,
                    model,
                    prompt,
                    input_tokens=prompt_tokens,
                    response_text=question.sql,
                )

        plan.step(
            "openai-request",
            sid,
            ms=(5, 20),
            body=request,
            error=llm_message if llm_error else "",
            logs=[(warning, "retrying after 429")] if llm_error else (),
        )
        if not llm_error:
            plan.step("response-parsing", sid, ms=(2, 15), output=question.sql)

    plan.step(
        "ai-generation",
        ms=(2, 10),
        body=generation,
        error="model call failed" if llm_error else "",
    )
    if llm_error:
        return _complete(plan, "error", "", "AI SQL generation failed: " + llm_message)

    plan.step("sql-validation", ms=(5, 40), output="valid")
    sql_error = rng.choice(SQL_ERRORS) if outcome == "sql_error" else ""
    rows = rng.randint(3, 400)

    def execution(sid: str) -> None:
        plan.step(
            "query-execution",
            sid,
            ms=(80, 2600),
            error=sql_error,
            logs=[(warning, "slow query")] if rng.random() < 0.2 else (),
        )
        if not sql_error:
            plan.step("result-processing", sid, ms=(5, 80), output=f"{rows} rows")

    plan.step("sql-execution", ms=(2, 10), body=execution, error=sql_error)
    if sql_error:
        return _complete(
            plan, "error", question.sql, "SQL execution failed: " + sql_error
        )
    plan.step("response-assembly", ms=(5, 60))
    confidence = 0.92 if sample else round(rng.uniform(0.72, 0.98), 4)
    return _complete(plan, "completed", question.sql, "", f"{rows} rows", confidence)


def _complete(
    plan: RunPlan,
    status: str,
    sql: str,
    error: str,
    result: str = "",
    confidence: float | None = None,
) -> RunPlan:
    codes = {
        "completed": res.SESSION_STATUS_COMPLETED,
        "error": res.SESSION_STATUS_ERROR,
    }
    plan.operations.append(
        _op(
            complete_session=api.CompleteSessionRequest(
                request_id=new_request_id(),
                session_id=plan.session_id,
                status=codes[status],
                generated_sql=sql,
                execution_result=result,
                error_message=error,
                overall_confidence=confidence,
                end_time=timestamp(plan.advance(2, 20)),
            )
        )
    )
    return plan


def plan_runs(
    count: int, rng: random.Random, now: dt.datetime
) -> list[tuple[RunPlan, str]]:
    """``count`` runs (the sample first) with the outcome of each."""
    runs: list[tuple[RunPlan, str]] = []
    for index in range(count):
        # Start at least an hour ago so that every run has ended before now.
        start = now - dt.timedelta(seconds=rng.randint(3600, 7 * 24 * 3600))
        if index == 0:
            plan = plan_run(
                rng, SAMPLE_USER, SAMPLE, start, model=MODELS[0], sample=True
            )
            runs.append((plan, "completed"))
            continue
        roll = rng.random()
        outcome = (
            "sql_error" if roll < 0.15 else "llm_error" if roll < 0.25 else "completed"
        )
        plan = plan_run(
            rng,
            rng.choice(USERS),
            rng.choice(QUESTIONS),
            start,
            model=rng.choice(MODELS),
            outcome=outcome,
        )
        runs.append((plan, outcome))
    return runs


# Single-call mode: which RPC sends each operation kind.
_METHODS = {
    "start_session": "StartSession",
    "record_step": "RecordStep",
    "append_logs": "AppendLogs",
    "record_llm_call": "RecordLlmCall",
    "complete_session": "CompleteSession",
}


def send(call: Callable[[str, Any], Any], plan: RunPlan, by_ingest: bool) -> None:
    if by_ingest:
        call(
            "Ingest",
            api.IngestRequest(request_id=new_request_id(), operations=plan.operations),
        )
        return
    for operation in plan.operations:
        kind = operation.WhichOneof("operation")
        assert kind is not None
        call(_METHODS[kind], getattr(operation, kind))


def run_demo(
    call: Callable[[str, Any], Any],
    sessions: int,
    seed: int | None = None,
    now: dt.datetime | None = None,
) -> Summary:
    """Sends ``sessions`` runs through ``call(method, request)``."""
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    summary = Summary()
    for index, (plan, outcome) in enumerate(plan_runs(sessions, rng, now)):
        by_ingest = index % 3 != 0
        send(call, plan, by_ingest)
        summary.sessions += 1
        summary.session_ids.append(plan.session_id)
        summary.steps += plan.steps
        summary.llm_calls += plan.calls
        summary.tokens += plan.tokens
        summary.cost_usd += plan.cost
        summary.error_sessions += outcome != "completed"
        summary.failed_sql += outcome == "sql_error"
        summary.sent_by_ingest += by_ingest
        summary.sent_by_calls += not by_ingest
        if index == 0:
            summary.sample_session_id = plan.session_id
    return summary
