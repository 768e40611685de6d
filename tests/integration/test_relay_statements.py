"""The relay's batch path on PostgreSQL: a constant number of statements per
batch whatever its size, and the same legacy rows as the portable
statements that SQLite and MariaDB use."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_relay import legacy_schema, legacy_store, rules
from outbox_relay.relay import Relay
from processflow.db import create_engine
from tests.support.databases import PostgresDatabases
from tests.support.outbox import BASE_TIME, typical_session, write_events
from tests.support.relay import Target, legacy_rows, make_target


@contextmanager
def counting_statements() -> Iterator[Counter[str]]:
    """Counts statements run on any engine, an executemany as one per row."""
    counts: Counter[str] = Counter()

    def before(
        _conn: Any,
        _cursor: Any,
        statement: str,
        params: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        counts[" ".join(statement.split()[:3])] += len(params) if executemany else 1

    sa.event.listen(sa.Engine, "before_cursor_execute", before)
    try:
        yield counts
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", before)


def _statements_for_one_batch(relay: Relay, sessions: int, prefix: str) -> int:
    events = [
        e
        for i in range(sessions)
        for e in typical_session(f"{prefix}-{i:04d}", user_id=f"user-{i % 7}")
    ]
    write_events(relay.outbox_engine, events)
    with counting_statements() as counts:
        assert relay.run_once() == len(events)
    return sum(counts.values())


@pytest.mark.parametrize("kind", ["postgresql", "postgresql+postgresql"])
def test_statements_per_batch_do_not_grow_with_the_batch(
    request: pytest.FixtureRequest, kind: str
) -> None:
    target = make_target(request, kind)
    relay = Relay(target.settings(batch_size=2000))
    try:
        # The first batch also prepares and caches statements; count later ones.
        _statements_for_one_batch(relay, 2, "warm")
        small = _statements_for_one_batch(relay, 10, "small")  # 80 events
        large = _statements_for_one_batch(relay, 200, "large")  # 1,600 events
    finally:
        relay.close()
    # Claim (2), ledger lookup, savepoint and release, four inserts, one
    # merged session update, two usage upserts, ledger insert, acknowledge,
    # notify: whatever the number of events.
    assert small == large, (small, large)
    assert large <= 16, large


def _effects(session_id: str, user_id: str) -> list[rules.Effect]:
    return [
        effect
        for event in typical_session(session_id, user_id=user_id)
        for effect in rules.effects_of(event, BASE_TIME)
    ]


def _snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    ordering = {
        "PromptSuccessTracking": ("SessionId",),
        "PromptConstructionTraces": ("TraceId",),
        "PromptConstructionSteps": ("Id",),
        "LLMUsageLogs": ("RequestId",),
        "TokenUsageAnalytics": ("UserId", "Date"),
        "processflow_token_usage_contributions": ("user_id", "usage_date"),
    }
    return {
        table: [
            {k: v for k, v in row.items() if k != "Id" or table not in _IDENTITY}
            for row in legacy_rows(url, table, *columns)
        ]
        for table, columns in ordering.items()
    }


_IDENTITY = {"PromptSuccessTracking", "LLMUsageLogs"}


def test_set_based_statements_write_what_the_portable_ones_write(
    pg_url: str, postgres_databases: PostgresDatabases
) -> None:
    other = postgres_databases.new()
    urls = [pg_url, other]
    day = BASE_TIME.date()
    # A counter that exists already takes the conflict path of the upsert.
    existing = rules.TokenUsageIncrement(
        "user-a", day, "enhanced", "aggregation", 3, 999, Decimal("0.5"),
        BASE_TIME, BASE_TIME,
    )  # fmt: skip
    batches = [
        # Sessions applied whole: inserts, then updates of the same rows.
        [*_effects("eq-1", "user-a"), *_effects("eq-2", "user-b")],
        # A session's later events alone: updates of rows from earlier.
        [*_effects("eq-3", "user-a")[:2]],
        [*_effects("eq-3", "user-a")[2:], *_effects("eq-4", "user-a")],
    ]
    for url, portable in zip(urls, (True, False), strict=True):
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                legacy_store.upsert_token_usage(connection, existing)
            for effects in batches:
                with engine.begin() as connection:
                    legacy_store.execute_effects(connection, effects, portable=portable)
        finally:
            engine.dispose()
    try:
        portable_rows, set_based_rows = (_snapshot(url) for url in urls)
    finally:
        postgres_databases.drop(other)
    assert set_based_rows == portable_rows
    (counter, *_others) = set_based_rows["TokenUsageAnalytics"]
    assert (counter["UserId"], counter["TotalRequests"]) == ("user-a", 3 + 6)
    assert counter["AverageTokensPerRequest"] == Decimal("177.67")
    tracking = set_based_rows["PromptSuccessTracking"]
    assert [row["GeneratedPrompt"] for row in tracking] == [
        f"PROMPT eq-{n}" for n in range(1, 5)
    ]


def test_mixed_value_types_fall_back_to_the_portable_insert(pg_url: str) -> None:
    # psycopg cannot send one array of Decimal and int; the rows still go in.
    first = _effects("mixed", "u")[0]
    assert isinstance(first, rules.RowInsert) and first.table == rules.PST
    row = dict(first.values)
    other = {**row, "SessionId": "mixed-2", "ConfidenceScore": 1}
    engine = create_engine(pg_url)
    try:
        with engine.begin() as connection:
            legacy_store.insert_rows(
                connection, legacy_schema.prompt_success_tracking, [row, other]
            )
    finally:
        engine.dispose()
    rows = legacy_rows(pg_url, "PromptSuccessTracking", "SessionId")
    assert [(r["SessionId"], r["ConfidenceScore"]) for r in rows] == [
        ("mixed", Decimal("0.0000")),
        ("mixed-2", Decimal("1.0000")),
    ]


def test_claim_takes_whole_sessions_and_fills_the_batch(
    request: pytest.FixtureRequest,
) -> None:
    target: Target = make_target(request, "postgresql")
    relay = Relay(target.settings(batch_size=100))
    events = [e for i in range(40) for e in typical_session(f"w-{i:02d}")]
    write_events(relay.outbox_engine, events)
    try:
        assert relay.run_once() == 100
    finally:
        relay.close()
    ledger = legacy_rows(target.legacy_url, "processflow_applied_events", "sequence")
    per_session = Counter(row["session_id"] for row in ledger)
    # Twelve whole sessions, and the first events of one more: every claimed
    # session starts at sequence 1 and has no gap.
    assert sorted(per_session.values(), reverse=True)[:12] == [8] * 12
    for session_id in per_session:
        sequences = sorted(
            r["sequence"] for r in ledger if r["session_id"] == session_id
        )
        assert sequences == list(range(1, len(sequences) + 1))
