"""The legacy rules as pure functions: which effects each event has, the
placeholders, ids, sink switches, and that every legacy column has a rule."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from outbox_relay import legacy_schema, rules
from outbox_relay.batch import filter_sinks
from processflow.v1 import events_pb2, resources_pb2
from tests.support.outbox import BASE_TIME, SessionEvents, typical_session

NOW = dt.datetime(2026, 5, 1, 12, 0, 0)


def _tables(effects: list[rules.Effect]) -> list[tuple[str, str]]:
    return [(type(e).__name__, e.table) for e in effects]


def test_every_legacy_column_is_filled_by_a_rule() -> None:
    written: dict[str, set[str]] = {t.name: set() for t in legacy_schema.LEGACY_TABLES}
    for event in typical_session("cov"):
        for effect in rules.effects_of(event, NOW):
            if isinstance(effect, rules.RowInsert):
                written[effect.table] |= set(effect.values)
    # TokenUsageAnalytics is written by the upsert from TokenUsageIncrement;
    # identity columns are assigned by the database.
    written["TokenUsageAnalytics"] = {
        c.name for c in legacy_schema.token_usage_analytics.c
    }
    identity = {"PromptSuccessTracking": {"Id"}, "LLMUsageLogs": {"Id"}}
    for table in legacy_schema.LEGACY_TABLES:
        missing = (
            {c.name for c in table.c}
            - written[table.name]
            - identity.get(table.name, set())
        )
        assert missing == set(), table.name


def test_effects_per_event_type() -> None:
    events = typical_session("s1")
    assert [_tables(rules.effects_of(e, NOW)) for e in events] == [
        [
            ("RowInsert", "PromptSuccessTracking"),
            ("RowInsert", "PromptConstructionTraces"),
        ],
        [],  # auth: new tables only
        [("RowInsert", "PromptConstructionSteps")],  # context-gathering
        [
            ("RowInsert", "PromptConstructionSteps"),
            ("RowUpdate", "PromptSuccessTracking"),
            ("RowUpdate", "PromptConstructionTraces"),
        ],
        [("RowInsert", "LLMUsageLogs"), ("TokenUsageIncrement", "TokenUsageAnalytics")],
        [("RowInsert", "LLMUsageLogs"), ("TokenUsageIncrement", "TokenUsageAnalytics")],
        [("RowUpdate", "PromptSuccessTracking")],  # sql-execution
        [
            ("RowUpdate", "PromptSuccessTracking"),
            ("RowUpdate", "PromptConstructionTraces"),
        ],
    ]


@pytest.mark.parametrize(
    ("step_type", "parent_type", "is_step_row"),
    [
        ("prompt-assembly", "", True),  # child by the catalog
        ("context-gathering", "", True),
        ("anything", "prompt-building", True),  # child by its parent
        ("openai-request", "", False),
        ("prompt-assembly", "ai-generation", False),  # actual parent wins
        ("sql-validation", "", False),
    ],
)
def test_prompt_construction_steps_only_for_prompt_building_and_children(
    step_type: str, parent_type: str, is_step_row: bool
) -> None:
    event = SessionEvents("s").step("x", step_type, parent_step_type=parent_type)
    tables = [e.table for e in rules.effects_of(event, NOW)]
    assert ("PromptConstructionSteps" in tables) is is_step_row


def test_prompt_building_that_did_not_complete_sets_no_prompt() -> None:
    event = SessionEvents("s").step(
        "p", "prompt-building", status=resources_pb2.STEP_STATUS_ERROR, output_data="x"
    )
    assert _tables(rules.effects_of(event, NOW)) == [
        ("RowInsert", "PromptConstructionSteps")
    ]


def test_sql_execution_completed_sets_success_without_error() -> None:
    event = SessionEvents("s").step("e", "sql-execution")
    (update,) = rules.effects_of(event, NOW)
    assert isinstance(update, rules.RowUpdate)
    assert update.key == "s"
    assert update.values == {
        "SQLExecutionSuccess": True,
        "SQLExecutionError": None,
        "UpdatedDate": BASE_TIME + dt.timedelta(milliseconds=10),
    }


@pytest.mark.parametrize(
    ("status", "recorded", "expected"),
    [
        (resources_pb2.SESSION_STATUS_COMPLETED, False, (True, None)),
        (resources_pb2.SESSION_STATUS_CANCELLED, False, (False, "stopped")),
        (resources_pb2.SESSION_STATUS_ERROR, False, (False, "stopped")),
        (resources_pb2.SESSION_STATUS_ERROR, True, None),
    ],
)
def test_session_completed_sets_sql_execution_only_when_no_step_did(
    status: int, recorded: bool, expected: tuple[bool, str | None] | None
) -> None:
    event = SessionEvents("s").completed(
        status=status, sql_execution_recorded=recorded, error_message="stopped"
    )
    tracking = rules.effects_of(event, NOW)[0]
    assert isinstance(tracking, rules.RowUpdate)
    values = tracking.values
    if expected is None:
        assert "SQLExecutionSuccess" not in values
        assert "SQLExecutionError" not in values
    else:
        assert (values["SQLExecutionSuccess"], values["SQLExecutionError"]) == expected


def test_trace_intent_falls_back_to_query_type_then_enhanced() -> None:
    def intent_type(**fields: str) -> object:
        event = SessionEvents("s", query_type="").started(**fields)
        return rules.effects_of(event, NOW)[1].values["IntentType"]  # type: ignore[union-attr]

    assert intent_type(intent="lookup", query_type="reporting") == "lookup"
    assert intent_type(intent="", query_type="reporting") == "reporting"
    assert intent_type(intent="", query_type="") == "enhanced"


def test_ids_are_deterministic_per_natural_key() -> None:
    first = rules.effects_of(SessionEvents("s").started(), NOW)
    again = rules.effects_of(SessionEvents("s").started(), NOW + dt.timedelta(hours=1))
    other = rules.effects_of(SessionEvents("t").started(), NOW)
    assert first[1].values["Id"] == again[1].values["Id"]  # type: ignore[union-attr]
    assert first[1].values["Id"] != other[1].values["Id"]  # type: ignore[union-attr]
    assert rules.token_usage_id("u", NOW.date(), "a", "b") != rules.token_usage_id(
        "u", NOW.date(), "a", "c"
    )


def test_token_usage_key_placeholders_and_cost_rounding() -> None:
    session = SessionEvents("s", user_id="", query_type="", intent="")
    event = session.llm_call("c", cost_usd="0.00000050", total_tokens=9)
    (_, usage) = rules.effects_of(event, NOW)
    assert isinstance(usage, rules.TokenUsageIncrement)
    assert usage.key == ("unknown", BASE_TIME.date(), "enhanced", "sql_generation")
    assert (usage.requests, usage.tokens, usage.cost) == (1, 9, Decimal("0.000001"))
    merged = usage.merged(usage)
    assert (merged.requests, merged.tokens, merged.cost) == (2, 18, Decimal("0.000002"))


def test_unusable_events_are_rule_errors() -> None:
    session = SessionEvents("s")
    with pytest.raises(rules.RuleError, match="not terminal"):
        rules.effects_of(
            session.step("x", "auth", status=resources_pb2.STEP_STATUS_RUNNING), NOW
        )
    with pytest.raises(rules.RuleError, match="cost_usd"):
        rules.effects_of(session.llm_call("c", cost_usd="cheap"), NOW)
    with pytest.raises(rules.RuleError, match="no payload"):
        rules.effects_of(events_pb2.OutboxEvent(session_id="s"), NOW)
    with pytest.raises(rules.RuleError, match="does not parse"):
        rules.decode(b"\xff\xff\xff", "session_started")
    with pytest.raises(rules.RuleError, match="event_type says"):
        rules.decode(session.started().SerializeToString(), "step_finished")


def test_disabled_traces_sink_also_skips_step_rows() -> None:
    event = SessionEvents("s").step("p", "prompt-building", output_data="x")
    kept, skipped = filter_sinks(
        rules.effects_of(event, NOW), {"PromptConstructionTraces"}
    )
    assert skipped == ("PromptConstructionSteps", "PromptConstructionTraces")
    assert _tables(kept) == [("RowUpdate", "PromptSuccessTracking")]
