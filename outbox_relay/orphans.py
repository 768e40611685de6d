"""Pass 2 of ``verify``: legacy rows that claim a ProcessFlow source which
does not exist.

A row claims a source when it carries ProcessFlow's mark: a SessionId the
applied-event ledger knows (PromptSuccessTracking), a ``trace-`` TraceId
(PromptConstructionTraces, and the steps hanging on such a trace), or
Metadata naming a session (LLMUsageLogs). Each legacy table is paged by its
own key and the page's ids are looked up in the main database, so the two
may be different databases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from outbox_relay import derive, reconcile
from outbox_relay import legacy_schema as ls
from outbox_relay.reconcile import RowDiff
from server import schema

if TYPE_CHECKING:
    from outbox_relay.verify import CoverageReport

SESSION_IDS = schema.sessions.c.session_id
CALL_IDS = schema.llm_calls.c.call_id

# Reads one page of a legacy table's claimed rows: (connection, after, limit,
# scope).
SelectPage = Callable[[sa.Connection, Any, int, derive.SessionFilter], list[Any]]


def select_existing(
    connection: sa.Connection, column: sa.Column[str], ids: Sequence[str]
) -> set[str]:
    """The ``ids`` that stand in ``column`` (sessions.session_id,
    llm_calls.call_id), looked up a chunk at a time."""
    found: set[str] = set()
    for part in reconcile.chunks(sorted(set(ids))):
        query = sa.select(column).where(column.in_(part))
        found.update(connection.scalars(query))
    return found


def select_claimed_tracking_page(
    connection: sa.Connection, after: int, limit: int, scope: derive.SessionFilter
) -> list[Any]:
    """PromptSuccessTracking rows of sessions the ledger knows (ProcessFlow's)."""
    pst, ledger = reconcile.PST, ls.applied_events
    known = sa.select(ledger.c.event_id).where(ledger.c.session_id == pst.c.SessionId)
    query = (
        sa.select(pst.c.Id, pst.c.SessionId)
        .where(pst.c.Id > after, known.exists())
        .order_by(pst.c.Id)
        .limit(limit)
    )
    if scope.session_id is not None:
        query = query.where(pst.c.SessionId == scope.session_id)
    if scope.since is not None:
        query = query.where(pst.c.CreatedDate >= scope.since)
    if scope.until is not None:
        query = query.where(pst.c.CreatedDate < scope.until)
    return list(connection.execute(query))


def select_claimed_trace_page(
    connection: sa.Connection, after: str, limit: int, scope: derive.SessionFilter
) -> list[Any]:
    traces = reconcile.TRACES
    query = (
        sa.select(traces.c.TraceId)
        .where(traces.c.TraceId > after, traces.c.TraceId.startswith("trace-"))
        .order_by(traces.c.TraceId)
        .limit(limit)
    )
    if scope.session_id is not None:
        query = query.where(traces.c.TraceId == "trace-" + scope.session_id)
    if scope.since is not None:
        query = query.where(traces.c.StartTime >= scope.since)
    if scope.until is not None:
        query = query.where(traces.c.StartTime < scope.until)
    return list(connection.execute(query))


def select_claimed_usage_log_page(
    connection: sa.Connection, after: int, limit: int, scope: derive.SessionFilter
) -> list[Any]:
    """LLMUsageLogs rows whose Metadata names a session (ProcessFlow's mark)."""
    llm = reconcile.LLM
    marker = '"session_id":'
    if scope.session_id is not None:
        marker = f'"session_id":"{scope.session_id}"'
    query = (
        sa.select(llm.c.Id, llm.c.RequestId)
        .where(llm.c.Id > after, llm.c.Metadata.contains(marker, autoescape=True))
        .order_by(llm.c.Id)
        .limit(limit)
    )
    if scope.since is not None:
        query = query.where(llm.c.Timestamp >= scope.since)
    if scope.until is not None:
        query = query.where(llm.c.Timestamp < scope.until)
    return list(connection.execute(query))


def check_orphans(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    report: CoverageReport,
    page_size: int,
) -> None:
    if scope.session_id is not None:
        with main.connect() as connection:
            if select_existing(connection, SESSION_IDS, [scope.session_id]):
                return  # pass 1 compared every row of this session

    def pages(select_page: SelectPage, key: str, first: Any) -> Iterator[list[Any]]:
        return _claimed_pages(legacy, select_page, key, first, scope, page_size)

    _orphan_tracking(main, pages(select_claimed_tracking_page, "Id", 0), report)
    traces = pages(select_claimed_trace_page, "TraceId", "")
    _orphan_traces(main, legacy, traces, report)
    _orphan_usage_logs(main, pages(select_claimed_usage_log_page, "Id", 0), report)


def _claimed_pages(
    legacy: sa.Engine,
    select_page: SelectPage,
    key: str,
    first: Any,
    scope: derive.SessionFilter,
    page_size: int,
) -> Iterator[list[Any]]:
    """The pages of a legacy table's claimed rows, paged by its ``key``."""
    after = first
    while True:
        with legacy.connect() as connection:
            page = select_page(connection, after, page_size, scope)
        if not page:
            return
        yield page
        after = getattr(page[-1], key)


def _add_gap(report: CoverageReport, table: str, key: Any, session_id: str) -> None:
    diff = RowDiff(table, "extra", key, session_id)
    report.tables[diff.table].add(diff, "gap")


def _orphan_tracking(
    main: sa.Engine, pages: Iterator[list[Any]], report: CoverageReport
) -> None:
    for page in pages:
        with main.connect() as connection:
            existing = select_existing(
                connection, SESSION_IDS, [r.SessionId for r in page]
            )
        for row in page:
            if row.SessionId not in existing:
                _add_gap(report, reconcile.PST.name, row.SessionId, row.SessionId)


def _orphan_traces(
    main: sa.Engine,
    legacy: sa.Engine,
    pages: Iterator[list[Any]],
    report: CoverageReport,
) -> None:
    for page in pages:
        sources = {r.TraceId: r.TraceId.removeprefix("trace-") for r in page}
        with main.connect() as connection:
            existing = select_existing(connection, SESSION_IDS, list(sources.values()))
        orphans = [t for t, s in sources.items() if s not in existing]
        if orphans:
            with legacy.connect() as connection:
                steps = reconcile.select_step_rows(connection, orphans)
            for trace_id in orphans:
                _add_gap(report, reconcile.TRACES.name, trace_id, sources[trace_id])
            for step in steps:
                _add_gap(report, reconcile.STEPS.name, step.Id, sources[step.TraceId])


def _orphan_usage_logs(
    main: sa.Engine, pages: Iterator[list[Any]], report: CoverageReport
) -> None:
    for page in pages:
        with main.connect() as connection:
            existing = select_existing(
                connection, CALL_IDS, [r.RequestId for r in page]
            )
        for row in page:
            if row.RequestId not in existing:
                _add_gap(report, reconcile.LLM.name, row.RequestId, "")
