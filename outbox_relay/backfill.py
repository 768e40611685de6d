"""``backfill``: write into the legacy tables whatever ``verify`` finds
missing or different, re-derived from the ProcessFlow tables.

Design choice: the backfill applies the relay's effects directly to the
legacy database, in bounded batches, instead of enqueueing events into the
outbox. The outbox orders a session's events and guarantees each is applied
once; a backfill needs neither, because it does not replay history: it looks
at the legacy rows first and writes only the rows (per sink) that are absent
or disagree with the latest state, so a second run finds nothing to do. It
therefore also repairs what the ledger cannot see -- a truncated legacy
table, a sink that was switched off, history from before the service -- and
needs no running relay.

Every written row gets a ledger row (origin ``backfill``) whose event id is
derived from (fact, sink, generation): two backfills racing on one fact
compute the same id, the second insert fails on the ledger's key, and that
page is retried, finding the rows present. Sessions with pending or parked
outbox events are left to the relay (writing their rows here would write
them twice when the relay catches up); they are counted, not touched.

TokenUsageAnalytics: a key's contribution is rebuilt from all its calls;
only the difference to the recorded contribution is added to the legacy
counter (so nothing is counted twice), and a counter found below
ProcessFlow's contribution (a truncated table) is raised to it.

Progress is saved after every committed page (session id, then usage day),
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from outbox_relay import derive, legacy_store, reconcile, rules, usage_totals
from outbox_relay.reconcile import RowDiff
from outbox_relay.settings import SINKS
from processflow.db import utcnow

log = logging.getLogger(__name__)

MAX_GENERATIONS = 64
KEY_COLUMNS = {
    rules.PST: "SessionId",
    rules.TRACES: "TraceId",
    rules.STEPS: "Id",
    rules.LLM_USAGE: "RequestId",
}


@dataclass
class BackfillResult:
    sessions: int = 0
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SINKS, 0))
    updated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SINKS, 0))
    # Sessions whose events the relay has yet to apply (or an operator to replay).
    left_to_relay: int = 0
    # Legacy rows without a ProcessFlow source: never deleted, only counted.
    extras_left: int = 0

    @property
    def written(self) -> int:
        return sum(self.inserted.values()) + sum(self.updated.values())


@dataclass
class ProgressFile:
    """Where a run stopped, for its scope; a different scope starts over."""

    path: Path | None
    scope: str

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return (
            saved
            if isinstance(saved, dict) and saved.get("scope") == self.scope
            else {}
        )

    def save(self, **state: Any) -> None:
        if self.path is not None:
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(
                json.dumps({"scope": self.scope, **state}, default=str)
            )
            temporary.replace(self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


Report = Callable[[str, int, BackfillResult], None]


def backfill(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    sinks: Collection[str],
    *,
    page_size: int = 500,
    progress: ProgressFile | None = None,
    report: Report | None = None,
) -> BackfillResult:
    progress = progress or ProgressFile(None, "")
    report = report or (lambda phase, done, result: None)
    state = progress.load()
    result = BackfillResult()
    if state.get("phase", "sessions") == "sessions":
        _backfill_sessions(
            main, legacy, scope, sinks, page_size, state, progress, report, result
        )
        state = {"phase": "usage"}
        progress.save(**state)
    if rules.TOKEN_USAGE in sinks:
        _backfill_usage(main, legacy, scope, page_size, state, progress, report, result)
    progress.clear()
    return result


def _backfill_sessions(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    sinks: Collection[str],
    page_size: int,
    state: dict[str, Any],
    progress: ProgressFile,
    report: Report,
    result: BackfillResult,
) -> None:
    after: str | None = state.get("after")
    while True:
        with main.connect() as connection:
            page = derive.select_session_page(connection, after, page_size, scope)
            facts = derive.load_facts(connection, page)
            unsettled = reconcile.select_unsettled_counts(
                connection, [f.session.session_id for f in facts]
            )
        if not facts:
            return
        ready = [f for f in facts if f.session.session_id not in unsettled]
        result.left_to_relay += len(facts) - len(ready)
        for attempt in (1, 2):
            try:
                _write_page(
                    legacy, [derive.expected_rows(f) for f in ready], sinks, result
                )
                break
            except sa.exc.IntegrityError:
                # Another backfill wrote some of these rows meanwhile.
                if attempt == 2:
                    raise
        result.sessions += len(facts)
        after = facts[-1].session.session_id
        progress.save(phase="sessions", after=after)
        report("sessions", result.sessions, result)
        if len(page) < page_size:
            return


def _write_page(
    legacy: sa.Engine,
    expected: list[derive.ExpectedRows],
    sinks: Collection[str],
    result: BackfillResult,
) -> None:
    ids = [e.session_id for e in expected]
    call_ids = [call_id for e in expected for call_id in e.calls]
    now = utcnow()
    with legacy.begin() as connection:
        rows = reconcile.read_legacy_page(connection, ids, call_ids)
        effects: list[rules.Effect] = []
        facts: list[tuple[str, str, str, str]] = []
        counts: list[tuple[str, str]] = []
        for session_rows in expected:
            diffs = reconcile.compare_session(session_rows, rows)
            trace_missing = any(
                d.table == rules.TRACES and d.kind == "missing" for d in diffs
            )
            for diff in diffs:
                if diff.kind == "extra":
                    result.extras_left += 1
                    continue
                if diff.table not in sinks:
                    continue
                if (
                    diff.table == rules.STEPS
                    and trace_missing
                    and rules.TRACES not in sinks
                ):
                    continue  # the row would reference a trace that is absent
                effects.append(_effect_for(diff, session_rows))
                facts.append(_fact_of(diff))
                counts.append((diff.table, diff.kind))
        if not effects:
            return
        generations = next_generations(connection, [(f[0], f[1]) for f in facts])
        legacy_store.execute_effects(connection, effects)
        legacy_store.insert_applied_events(
            connection,
            [
                _ledger_row(
                    fact, sink, generations[(fact, sink)], session_id, kind, now
                )
                for fact, sink, session_id, kind in facts
            ],
        )
    for table, kind in counts:
        (result.inserted if kind == "missing" else result.updated)[table] += 1


def _effect_for(diff: RowDiff, expected: derive.ExpectedRows) -> rules.Effect:
    if diff.table == rules.PST:
        values = expected.tracking
    elif diff.table == rules.TRACES:
        values = expected.trace
    elif diff.table == rules.STEPS:
        values = expected.steps[diff.key]
    else:
        values = expected.calls[diff.key]
    assert values is not None
    if diff.kind == "missing":
        return rules.RowInsert(diff.table, dict(values))
    changed = {name: values[name] for name in diff.columns}
    return rules.RowUpdate(diff.table, KEY_COLUMNS[diff.table], diff.key, changed)


def _fact_of(diff: RowDiff) -> tuple[str, str, str, str]:
    """(fact, sink, session id, event type) of a row the backfill writes."""
    if diff.table == rules.STEPS:
        kind = "step_finished"
    elif diff.table == rules.LLM_USAGE:
        kind = "llm_call_recorded"
    else:
        kind = "session_started"
    return (f"{kind}:{diff.key}", diff.table, diff.session_id, kind)


def next_generations(
    connection: sa.Connection, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """For each (fact, sink), the first generation whose ledger id is unused."""
    found: dict[tuple[str, str], int] = {}
    pending = sorted(set(pairs))
    generation = 1
    while pending and generation <= MAX_GENERATIONS:
        ids = {derive.backfill_event_id(f, s, generation): (f, s) for f, s in pending}
        used = legacy_store.select_applied_event_ids(connection, list(ids))
        for event_id, pair in ids.items():
            if event_id not in used:
                found[pair] = generation
        pending = [pair for pair in pending if pair not in found]
        generation += 1
    if pending:
        raise RuntimeError(
            f"{pending[0]} was backfilled {MAX_GENERATIONS} times already"
        )
    return found


def _ledger_row(
    fact: str, sink: str, generation: int, session_id: str, kind: str, now: dt.datetime
) -> dict[str, Any]:
    return {
        "event_id": derive.backfill_event_id(fact, sink, generation),
        "session_id": session_id[:128],
        "sequence": 0,
        "event_type": kind,
        "skipped_sinks": "",
        "origin": "backfill",
        "applied_at": now,
    }


# TokenUsageAnalytics.


def _backfill_usage(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    page_size: int,
    state: dict[str, Any],
    progress: ProgressFile,
    report: Report,
    result: BackfillResult,
) -> None:
    days = usage_totals.scope_of(main, scope)
    if days is None:
        return
    if state.get("after_day"):
        resume = dt.date.fromisoformat(state["after_day"]) + dt.timedelta(days=1)
        days = dataclasses.replace(
            days, start_day=max(resume, days.start_day or resume)
        )
    seen: set[dt.date] = set()
    for day in usage_totals.daily_usage(main, days, page_size):
        seen.add(day.day)
        _write_usage_day(legacy, day, days.user_id, result)
        progress.save(phase="usage", after_day=day.day.isoformat())
        report("usage days", len(seen), result)
    if scope.session_id is not None:
        return
    with legacy.connect() as connection:
        other_days = [
            d
            for d in usage_totals.select_contribution_days(connection, days)
            if d not in seen
        ]
    for other in other_days:
        _write_usage_day(legacy, usage_totals.DayUsage(other), None, result)


def _write_usage_day(
    legacy: sa.Engine,
    day: usage_totals.DayUsage,
    user_id: str | None,
    result: BackfillResult,
) -> None:
    now = utcnow()
    with legacy.begin() as connection:
        contributions = usage_totals.select_day_contributions(
            connection, day.day, user_id
        )
        counters = usage_totals.select_day_counters(connection, day.day, user_id)
        keys = sorted(set(day.keys) | set(contributions))
        for key in keys:
            usage = day.keys.get(key)
            if usage is not None and (usage.in_flight or usage.parked):
                continue
            rebuilt = (
                usage_totals.expected_totals(usage) if usage else (0, 0, Decimal(0))
            )
            recorded = usage_totals.totals(contributions.get(key), "c")
            counter = usage_totals.totals(counters.get(key), "")
            wrote = _correct_key(connection, key, rebuilt, recorded, counter, now)
            if wrote:
                kind = "updated" if key in counters else "inserted"
                getattr(result, kind)[rules.TOKEN_USAGE] += 1


Totals = tuple[int, int, Decimal]


def _correct_key(
    connection: sa.Connection,
    key: usage_totals.Key,
    rebuilt: Totals,
    recorded: Totals,
    counter: Totals,
    now: dt.datetime,
) -> bool:
    """Brings the key's contribution to ``rebuilt`` and its counter to at least
    that; returns whether anything was written."""
    delta = _minus(rebuilt, recorded)
    raised = _minus(rebuilt, _plus(counter, delta))
    counter_change = _plus(
        delta, (max(raised[0], 0), max(raised[1], 0), max(raised[2], Decimal(0)))
    )
    if not any(delta) and not any(counter_change):
        return False
    if any(counter_change):
        _upsert(
            connection,
            _increment(key, counter_change, now),
            legacy_store.update_token_usage,
            legacy_store.insert_token_usage,
        )
    if any(delta):
        _upsert(
            connection,
            _increment(key, delta, now),
            legacy_store.update_token_usage_contribution,
            legacy_store.insert_token_usage_contribution,
        )
    return True


def _minus(left: Totals, right: Totals) -> Totals:
    return (left[0] - right[0], left[1] - right[1], left[2] - right[2])


def _plus(left: Totals, right: Totals) -> Totals:
    return (left[0] + right[0], left[1] + right[1], left[2] + right[2])


def _increment(
    key: usage_totals.Key, change: Totals, now: dt.datetime
) -> rules.TokenUsageIncrement:
    user_id, day, request_type, intent = key
    return rules.TokenUsageIncrement(
        user_id=user_id,
        usage_date=day,
        request_type=request_type,
        intent_type=intent,
        requests=change[0],
        tokens=change[1],
        cost=change[2],
        first_at=now,
        at=now,
    )


def _upsert(
    connection: sa.Connection,
    increment: rules.TokenUsageIncrement,
    update: Callable[[sa.Connection, rules.TokenUsageIncrement], int],
    insert: Callable[[sa.Connection, rules.TokenUsageIncrement], None],
) -> None:
    if not update(connection, increment):
        insert(connection, increment)


def validate_sinks(names: Collection[str]) -> frozenset[str]:
    unknown = sorted(set(names) - set(SINKS))
    if unknown:
        raise ValueError(f"--sink: unknown {unknown[0]!r}; one of {', '.join(SINKS)}")
    return frozenset(names) if names else frozenset(SINKS)
