"""Comparing the legacy rows of a page of sessions with the rows the rules
give for their latest state (outbox_relay/derive.py).

The legacy side is looked up by the page's own keys (session ids, trace ids,
call ids), so the two sides may live in different databases, on different
engines with different collations: nothing here depends on both sides
sorting keys the same way.

A difference is ``missing`` (no legacy row), ``different`` (a compared column
disagrees) or ``extra`` (a legacy row that claims a ProcessFlow source that
does not exist, or a second row for one source). Columns that say when a
row was written (CreatedAt, UpdatedAt, UpdatedDate) and the feedback columns
the legacy application fills are not compared.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from outbox_relay import legacy_schema as ls
from outbox_relay import rules
from outbox_relay.derive import ExpectedRows
from server import schema

NOT_COMPARED = frozenset(
    {"Id", "CreatedAt", "UpdatedAt", "UpdatedDate"}
    | {"UserFeedbackRating", "UserFeedbackComments"}
)
# Id is compared where the relay derives it (traces and steps): it is the key.
KEYED_BY_ID = frozenset({rules.TRACES, rules.STEPS})
JSON_COLUMNS = frozenset({"Metadata", "Details"})
# IN lists are cut to this many values per statement.
CHUNK = 1000

PST = ls.prompt_success_tracking
TRACES = ls.prompt_construction_traces
STEPS = ls.prompt_construction_steps
LLM = ls.llm_usage_logs
LEDGER = ls.applied_events


@dataclass(frozen=True)
class RowDiff:
    table: str
    kind: str  # missing | different | extra
    key: str  # SessionId, TraceId, step row Id, RequestId or usage key
    session_id: str
    columns: tuple[str, ...] = ()


@dataclass
class LegacyPage:
    """The legacy rows of one page of sessions."""

    tracking: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    traces: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def select_tracking_rows(
    connection: sa.Connection, session_ids: Sequence[str]
) -> list[Any]:
    rows: list[Any] = []
    for part in chunks(session_ids):
        query = sa.select(PST).where(PST.c.SessionId.in_(part)).order_by(PST.c.Id)
        rows.extend(connection.execute(query))
    return rows


def select_trace_rows(connection: sa.Connection, trace_ids: Sequence[str]) -> list[Any]:
    rows: list[Any] = []
    for part in chunks(trace_ids):
        rows.extend(
            connection.execute(sa.select(TRACES).where(TRACES.c.TraceId.in_(part)))
        )
    return rows


def select_step_rows(connection: sa.Connection, trace_ids: Sequence[str]) -> list[Any]:
    rows: list[Any] = []
    for part in chunks(trace_ids):
        rows.extend(
            connection.execute(sa.select(STEPS).where(STEPS.c.TraceId.in_(part)))
        )
    return rows


def select_usage_log_rows(
    connection: sa.Connection, request_ids: Sequence[str]
) -> list[Any]:
    rows: list[Any] = []
    for part in chunks(request_ids):
        query = sa.select(LLM).where(LLM.c.RequestId.in_(part)).order_by(LLM.c.Id)
        rows.extend(connection.execute(query))
    return rows


def read_legacy_page(
    connection: sa.Connection, session_ids: Sequence[str], call_ids: Sequence[str]
) -> LegacyPage:
    page = LegacyPage()
    trace_ids = [rules.trace_id(session_id) for session_id in session_ids]
    for row in select_tracking_rows(connection, session_ids):
        page.tracking[row.SessionId].append(row)
    for row in select_trace_rows(connection, trace_ids):
        page.traces[row.TraceId] = row
    for row in select_step_rows(connection, trace_ids):
        page.steps[row.TraceId].append(row)
    for row in select_usage_log_rows(connection, call_ids):
        page.calls[row.RequestId].append(row)
    return page


def select_skipped_sinks(
    connection: sa.Connection, session_ids: Sequence[str]
) -> dict[str, set[str]]:
    """Per session, the sinks that were switched off when its events applied."""
    skipped: dict[str, set[str]] = defaultdict(set)
    for part in chunks(session_ids):
        query = sa.select(LEDGER.c.session_id, LEDGER.c.skipped_sinks).where(
            LEDGER.c.session_id.in_(part), LEDGER.c.skipped_sinks != ""
        )
        for row in connection.execute(query):
            skipped[row.session_id].update(s for s in row.skipped_sinks.split(",") if s)
    return skipped


def select_unsettled_counts(
    connection: sa.Connection, session_ids: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """Per session with any: (pending, parked) outbox events."""
    o = schema.outbox.c
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for part in chunks(session_ids):
        query = (
            sa.select(o.session_id, o.status, sa.func.count().label("n"))
            .where(o.session_id.in_(part), o.status.in_(("pending", "dead")))
            .group_by(o.session_id, o.status)
        )
        for row in connection.execute(query):
            counts[row.session_id][0 if row.status == "pending" else 1] += int(row.n)
    return {session_id: (p, d) for session_id, (p, d) in counts.items()}


# Comparing values.


def _decimal_equal(left: Any, right: Any, scale: int) -> bool:
    quantum = Decimal(1).scaleb(-scale)
    return Decimal(str(left)).quantize(quantum) == Decimal(str(right)).quantize(quantum)


def _json_equal(left: Any, right: Any) -> bool:
    try:
        return bool(json.loads(left) == json.loads(right))
    except (TypeError, ValueError):
        return bool(left == right)


def same_value(table: sa.Table, column: str, expected: Any, actual: Any) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    column_type = table.c[column].type
    if column in JSON_COLUMNS:
        return _json_equal(expected, actual)
    if isinstance(column_type, sa.Numeric) and not isinstance(column_type, sa.Float):
        return _decimal_equal(expected, actual, column_type.scale or 0)
    if isinstance(column_type, sa.Boolean):
        return bool(expected) == bool(actual)
    return bool(expected == actual)


def differing_columns(
    table: sa.Table, expected: dict[str, Any], row: Any
) -> tuple[str, ...]:
    mapping = row._mapping
    return tuple(
        name
        for name, value in expected.items()
        if name not in NOT_COMPARED
        and not same_value(table, name, value, mapping[name])
    )


def compare_session(expected: ExpectedRows, legacy: LegacyPage) -> list[RowDiff]:
    """Every difference between one session's expected rows and the legacy page."""
    session_id = expected.session_id
    diffs: list[RowDiff] = []
    trace_id = rules.trace_id(session_id)

    tracking_rows = legacy.tracking.get(session_id, [])
    if expected.tracking is not None:
        diffs.extend(
            _compare_one(PST, session_id, session_id, expected.tracking, tracking_rows)
        )
    trace = legacy.traces.get(trace_id)
    if expected.trace is not None:
        trace_rows = [trace] if trace is not None else []
        diffs.extend(
            _compare_one(TRACES, trace_id, session_id, expected.trace, trace_rows)
        )

    step_rows = {row.Id: row for row in legacy.steps.get(trace_id, [])}
    for row_id, values in expected.steps.items():
        diffs.extend(
            _compare_one(STEPS, row_id, session_id, values, [step_rows.pop(row_id)])
            if row_id in step_rows
            else [RowDiff(STEPS.name, "missing", row_id, session_id)]
        )
    diffs.extend(
        RowDiff(STEPS.name, "extra", row_id, session_id) for row_id in step_rows
    )

    for request_id, values in expected.calls.items():
        diffs.extend(
            _compare_one(
                LLM, request_id, session_id, values, legacy.calls.get(request_id, [])
            )
        )
    return diffs


def _compare_one(
    table: sa.Table,
    key: str,
    session_id: str,
    expected: dict[str, Any],
    rows: list[Any],
) -> list[RowDiff]:
    if not rows:
        return [RowDiff(table.name, "missing", key, session_id)]
    # With duplicates, the closest row is the one ProcessFlow is said to own.
    candidates = sorted(
        (differing_columns(table, expected, row), index)
        for index, row in enumerate(rows)
    )
    columns, _ = candidates[0]
    diffs = [RowDiff(table.name, "extra", key, session_id) for _ in rows[1:]]
    if columns:
        diffs.insert(0, RowDiff(table.name, "different", key, session_id, columns))
    return diffs
