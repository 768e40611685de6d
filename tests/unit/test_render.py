"""The session tree that ``show`` and ``watch`` print."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import timestamp_pb2

from processflow import render
from processflow.v1 import resources_pb2 as res

T0 = dt.datetime(2024, 5, 3, 14, 22, 0)


def ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + dt.timedelta(milliseconds=ms))
    return stamp


def step(step_id: str, name: str, ms: int, **fields: object) -> res.Step:
    fields.setdefault("status", res.STEP_STATUS_COMPLETED)
    return res.Step(
        step_id=step_id,
        step_type=step_id,
        name=name,
        start_time=ts(0),
        end_time=ts(ms),
        duration_ms=ms,
        **fields,  # type: ignore[arg-type]
    )


def sample() -> res.Session:
    prompt = step(
        "prompt-building",
        "Prompt Construction",
        210,
        tokens_used=1250,
        confidence=0.95,
        children=[
            step("context-gathering", "Context Gathering", 80),
            step(
                "prompt-assembly",
                "Prompt Assembly",
                40,
                logs=[
                    res.LogEntry(level=res.LOG_LEVEL_INFO, message="assembled"),
                    res.LogEntry(level=res.LOG_LEVEL_WARNING, message="long\nprompt"),
                ],
            ),
        ],
    )
    generation = step(
        "ai-generation",
        "AI SQL Generation",
        1890,
        children=[step("openai-request", "OpenAI API Call", 1840)],
    )
    failed = step(
        "sql-execution",
        "SQL Execution",
        3000,
        status=res.STEP_STATUS_ERROR,
        error_message="Timeout expired. " * 10,
    )
    return res.Session(
        session_id="9b1c2f6e-1111-4222-8333-444455556666",
        user_id="john.doe@company.com",
        query="Show me total sales by region for last quarter",
        query_type="enhanced",
        status=res.SESSION_STATUS_ERROR,
        start_time=ts(0),
        end_time=ts(5200),
        total_duration_ms=5200,
        overall_confidence=0.42,
        intent="aggregation",
        domain="sales",
        template="sales_aggregation",
        generated_sql="SELECT r.RegionName, SUM(s.Amount) AS TotalSales FROM Sales s "
        "JOIN Regions r ON s.RegionId = r.Id GROUP BY r.RegionName",
        error_message="SQL execution failed",
        steps=[
            step("auth", "Authentication & Authorization", 12, confidence=0.99),
            prompt,
            generation,
            failed,
        ],
        transparency=res.Transparency(
            total_tokens=1430,
            prompt_tokens=1250,
            completion_tokens=180,
            estimated_cost_usd=0.0483,
            api_call_count=1,
        ),
        llm_calls=[
            res.LlmCall(
                call_id="c1",
                step_id="openai-request",
                provider="openai",
                model="gpt-4",
                input_tokens=1250,
                output_tokens=180,
                cost_usd=0.0483,
                duration_ms=1840,
                success=True,
            )
        ],
        coverage=res.Coverage(
            status=res.COVERAGE_STATUS_PENDING,
            total_events=9,
            applied_events=7,
            pending_events=2,
        ),
    )


def test_session_renders_as_a_tree_within_80_columns() -> None:
    lines = render.render_session(sample(), width=80)

    assert all(len(line) <= 80 for line in lines), [x for x in lines if len(x) > 80]
    assert lines[0] == "Session 9b1c2f6e-1111-4222-8333-444455556666  ✗ error  5.20 s"
    assert lines[1] == "User john.doe@company.com  started 2024-05-03 14:22:00 UTC"
    assert lines[2] == "Query Show me total sales by region for last quarter"
    assert lines[3] == (
        "intent aggregation  domain sales  template sales_aggregation  type enhanced"
    )
    assert lines[4] == (
        "Tokens 1,430 (1,250 in / 180 out)  cost $0.0483  1 LLM call  confidence 0.42"
    )
    assert lines[5] == "Legacy view pending: 7/9 events applied, 2 pending"
    assert lines[6].startswith("SQL SELECT r.RegionName") and lines[6].endswith("…")
    assert lines[7] == "Error SQL execution failed"
    assert lines[8] == "─" * 80
    tree = [line.rstrip() for line in lines[9:]]
    assert tree[0].startswith("├─ ✓ Authentication & Authorization")
    assert tree[0].endswith("12 ms             0.99")
    assert tree[1].startswith("├─ ✓ Prompt Construction")
    assert tree[1].endswith("210 ms   1,250 tok 0.95")
    assert tree[2].startswith("│  ├─ ✓ Context Gathering")
    assert tree[3].startswith("│  └─ ✓ Prompt Assembly")
    # Only the warning shows, on one line, under the step's name.
    assert tree[4] == "│       [warning] long prompt"
    assert tree[5].startswith("├─ ✓ AI SQL Generation")
    assert tree[6].startswith("│  └─ ✓ OpenAI API Call")
    assert tree[7] == "│       ⇢ openai/gpt-4  1,250+180 tok  $0.0483  1.84 s"
    assert tree[8].startswith("└─ ✗ SQL Execution") and tree[8].endswith("3.00 s")
    assert tree[9].startswith("     ! Timeout expired. Timeout expired.")
    assert len(tree[9]) == 80 and tree[9].endswith("…")
    assert len(tree) == 10


def test_columns_line_up_and_every_width_is_respected() -> None:
    for width in (40, 60, 80, 120):
        lines = render.render_session(sample(), width=width)
        assert all(len(line) <= width for line in lines), width
        step_lines = [line for line in lines if " ms" in line or " s" in line[-30:]]
        ends = {line.index("ms") for line in step_lines if line.rstrip().endswith("ms")}
        assert len(ends) <= 1, (width, ends)
    narrow = render.render_session(sample(), width=10)
    assert all(len(line) <= render.MIN_WIDTH for line in narrow)


def test_all_logs_shows_info_lines_too() -> None:
    lines = render.render_session(sample(), width=80, all_logs=True)
    assert "│       [info] assembled" in lines
    assert "│       [warning] long prompt" in lines


def test_ascii_glyphs_when_the_output_cannot_carry_unicode() -> None:
    assert render.glyphs_for("utf-8") is render.UNICODE
    assert render.glyphs_for("ascii") is render.ASCII
    assert render.glyphs_for(None) is render.ASCII
    lines = render.render_session(sample(), width=80, glyphs=render.ASCII)
    assert all(line.isascii() for line in lines)
    assert any(line.startswith("|  `- + Prompt Assembly") for line in lines)
    assert any(line.startswith("`- x SQL Execution") for line in lines)


def test_running_session_shows_elapsed_time_and_running_steps() -> None:
    session = res.Session(
        session_id="s1",
        user_id="u1",
        query="q",
        status=res.SESSION_STATUS_RUNNING,
        start_time=ts(0),
        steps=[
            res.Step(
                step_id="auth",
                name="Authentication & Authorization",
                status=res.STEP_STATUS_RUNNING,
                start_time=ts(500),
            ),
            res.Step(step_id="later", name="Later", status=res.STEP_STATUS_PENDING),
        ],
    )
    now = T0 + dt.timedelta(seconds=3)
    lines = render.render_session(session, width=80, now=now)
    assert lines[0] == "Session s1  ▶ running  3.00 s"
    assert lines[3] == "Tokens 0 (0 in / 0 out)  cost $0.0000  0 LLM calls"
    assert lines[5].startswith("├─ ▶ Authentication") and lines[5].endswith("2.50 s")
    assert lines[6].rstrip() == "└─ ○ Later"


def test_calls_and_logs_without_a_step_are_listed_under_the_session() -> None:
    session = res.Session(
        session_id="s2",
        user_id="u",
        query="q",
        status=res.SESSION_STATUS_COMPLETED,
        llm_calls=[
            res.LlmCall(
                call_id="c",
                provider="anthropic",
                model="claude-3",
                input_tokens=10,
                output_tokens=5,
                cost_usd=0.00001,
                duration_ms=65_000,
                success=False,
                error_message="429\nrate limited",
            )
        ],
        logs=[res.LogEntry(level=res.LOG_LEVEL_ERROR, message="boom")],
    )
    lines = render.render_session(session, width=80)
    assert "(no steps yet)" in lines
    index = lines.index("Session")
    assert lines[index + 1] == (
        "  ⇢ anthropic/claude-3  10+5 tok  $0.000010  1m 05s  failed: 429 rate limited"
    )
    assert lines[index + 2] == "  [error] boom"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 ms"),
        (999, "999 ms"),
        (1000, "1.00 s"),
        (59_999, "60.00 s"),
        (61_000, "1m 01s"),
        (3_723_000, "1h 02m"),
    ],
)
def test_durations(ms: int, text: str) -> None:
    assert render.duration(ms) == text


def test_one_line_collapses_whitespace_and_cuts() -> None:
    assert render.one_line("a\n\tb   c", 80) == "a b c"
    assert render.one_line("abcdef", 4) == "abc…"
    assert render.one_line("abcdef", 4, render.ASCII) == "a..."
    assert render.one_line("abcdef", 0) == ""
