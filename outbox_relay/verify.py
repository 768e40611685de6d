"""``verify``: reconcile the legacy tables with the ProcessFlow tables
(LEGACY.md §5) and say, per legacy table, what is missing, different or
extra, and whether each difference is still in flight or a real gap.

Three passes, each bounded in memory:

1. Sessions, a page at a time by session_id: the rows the rules give for
   each session's events as the relay applied them (outbox_relay/derive.py)
   against the legacy rows looked up by the page's keys
   (outbox_relay/reconcile.py).
2. Orphans: legacy rows that claim a ProcessFlow source which does not exist
   (a SessionId the ledger knows, a ``trace-`` TraceId, an LLMUsageLogs row
   whose Metadata names a session), paged by the legacy table's own key and
   checked against the main database by the page's ids.
3. TokenUsageAnalytics, a UTC day at a time (outbox_relay/usage_totals.py).

Lookups go by key in both directions, so main and legacy may be different
databases on different engines. A difference whose session still has
pending outbox events is ``in_flight`` (the relay will close it); one whose
session has a dead-lettered event is ``parked`` (an operator must act);
anything else is a gap, marked ``sink_off`` when the ledger says the sink was
switched off when the event applied (a backfill closes those).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from outbox_relay import derive, orphans, reconcile, usage_totals
from outbox_relay import legacy_schema as ls
from outbox_relay.reconcile import RowDiff

TABLE_NAMES = tuple(table.name for table in ls.LEGACY_TABLES)
SAMPLES_PER_KIND = 5
KINDS = ("missing", "different", "extra")


@dataclass
class TableCoverage:
    table: str
    expected: int = 0
    present: int = 0
    missing: int = 0
    different: int = 0
    extra: int = 0
    in_flight: int = 0
    parked: int = 0
    sink_off: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return self.missing + self.different + self.extra - self.in_flight - self.parked

    def add(self, diff: RowDiff, status: str) -> None:
        setattr(self, diff.kind, getattr(self, diff.kind) + 1)
        if status == "in_flight":
            self.in_flight += 1
        elif status == "parked":
            self.parked += 1
        elif status == "sink_off":
            self.sink_off += 1
        if sum(1 for s in self.samples if s["kind"] == diff.kind) < SAMPLES_PER_KIND:
            sample: dict[str, Any] = {
                "kind": diff.kind,
                "key": diff.key,
                "status": status,
            }
            if diff.session_id:
                sample["session_id"] = diff.session_id
            if diff.columns:
                sample["columns"] = list(diff.columns)
            self.samples.append(sample)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "present": self.present,
            "missing": self.missing,
            "different": self.different,
            "extra": self.extra,
            "in_flight": self.in_flight,
            "parked": self.parked,
            "gaps": self.gaps,
            "sink_off": self.sink_off,
            "samples": self.samples,
        }


@dataclass
class CoverageReport:
    sessions: int = 0
    elapsed_seconds: float = 0.0
    tables: dict[str, TableCoverage] = field(
        default_factory=lambda: {name: TableCoverage(name) for name in TABLE_NAMES}
    )

    @property
    def covered(self) -> bool:
        return all(t.missing + t.different + t.extra == 0 for t in self.tables.values())

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "covered": self.covered,
            "sessions_checked": self.sessions,
            "gaps": self.total("gaps"),
            "in_flight": self.total("in_flight"),
            "parked": self.total("parked"),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "tables": {name: t.as_dict() for name, t in self.tables.items()},
        }


def classify(
    diff: RowDiff,
    unsettled: tuple[int, int] | None,
    skipped: set[str] | None,
) -> str:
    if diff.kind != "extra" and unsettled is not None:
        pending, parked = unsettled
        # A dead event holds back the session's later events: only an
        # operator moves it, so parked wins over in flight.
        if parked:
            return "parked"
        if pending:
            return "in_flight"
    if skipped and diff.table in skipped:
        return "sink_off"
    return "gap"


def verify(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    *,
    page_size: int = 2000,
) -> CoverageReport:
    """One reconciliation of everything in ``scope``."""
    began = time.monotonic()
    report = CoverageReport()
    check_sessions(main, legacy, scope, report, page_size)
    orphans.check_orphans(main, legacy, scope, report, page_size)
    check_token_usage(main, legacy, scope, report, page_size)
    report.elapsed_seconds = time.monotonic() - began
    return report


def check_sessions(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    report: CoverageReport,
    page_size: int,
) -> None:
    after: str | None = None
    while True:
        with main.connect() as connection:
            page = derive.select_session_page(connection, after, page_size, scope)
            facts = derive.load_facts(connection, page)
            ids = [f.session.session_id for f in facts]
            unsettled = reconcile.select_unsettled_counts(connection, ids)
        if not facts:
            return
        expected = [derive.expected_rows(f) for f in facts]
        call_ids = [call_id for e in expected for call_id in e.calls]
        with legacy.connect() as connection:
            rows = reconcile.read_legacy_page(connection, ids, call_ids)
            skipped = reconcile.select_skipped_sinks(connection, ids)
        for rows_of in expected:
            _count_expected(report, rows_of)
            for diff in reconcile.compare_session(rows_of, rows):
                status = classify(
                    diff, unsettled.get(diff.session_id), skipped.get(diff.session_id)
                )
                report.tables[diff.table].add(diff, status)
        report.sessions += len(facts)
        for table in report.tables.values():
            table.present = table.expected - table.missing
        after = ids[-1]
        if len(page) < page_size:
            return


def _count_expected(report: CoverageReport, rows: derive.ExpectedRows) -> None:
    tables = report.tables
    tables[reconcile.PST.name].expected += rows.tracking is not None
    tables[reconcile.TRACES.name].expected += rows.trace is not None
    tables[reconcile.STEPS.name].expected += len(rows.steps)
    tables[reconcile.LLM.name].expected += len(rows.calls)


# Pass 3: TokenUsageAnalytics.


def check_token_usage(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    report: CoverageReport,
    page_size: int,
) -> None:
    days_scope = usage_totals.scope_of(main, scope)
    if days_scope is None:
        return
    table = report.tables[usage_totals.USAGE.name]
    seen: set[dt.date] = set()
    for day in usage_totals.daily_usage(main, days_scope, page_size):
        seen.add(day.day)
        with legacy.connect() as connection:
            contributions = usage_totals.select_day_contributions(
                connection, day.day, days_scope.user_id
            )
            counters = usage_totals.select_day_counters(
                connection, day.day, days_scope.user_id
            )
        table.expected += len(day.keys)
        for diff, usage in usage_totals.compare_day(day, contributions, counters):
            status = "gap"
            if usage is not None and usage.in_flight:
                status = "in_flight"
            elif usage is not None and usage.parked:
                status = "parked"
            table.add(diff, status)
    table.present = table.expected - table.missing
    if scope.session_id is not None:
        return
    with legacy.connect() as connection:
        other_days = [
            d
            for d in usage_totals.select_contribution_days(connection, days_scope)
            if d not in seen
        ]
        for other in other_days:
            empty = usage_totals.DayUsage(other)
            contributions = usage_totals.select_day_contributions(
                connection, other, None
            )
            for diff, _ in usage_totals.compare_day(empty, contributions, {}):
                table.add(diff, "gap")
