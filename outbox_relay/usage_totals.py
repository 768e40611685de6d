"""TokenUsageAnalytics, reconciled per (user, day, request type, intent).

The expected totals of a key are rebuilt from the LLM calls, each call put
through the relay's own rule (so the key's defaults, the cut to column size
and the per-call rounding of the cost are the relay's). Calls are read a page
at a time in (call_time, id) order, so each UTC day's calls arrive together
and a day's keys are compared, then forgotten, before the next day's are
read: memory holds one day's keys, never all of them.

ProcessFlow's own share of each counter is in
processflow_token_usage_contributions; the legacy counter may hold more
(rows from before ProcessFlow) but never less.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from outbox_relay import derive, rules
from outbox_relay import legacy_schema as ls
from outbox_relay.reconcile import RowDiff
from processflow.v1 import events_pb2
from server import schema
from server.store.convert import to_timestamp

C = schema.llm_calls
S = schema.sessions
OUTBOX = schema.outbox
USAGE = ls.token_usage_analytics
CONTRIBUTIONS = ls.token_usage_contributions

Key = tuple[str, dt.date, str, str]


@dataclass(frozen=True)
class UsageScope:
    """Calls made from ``start_day`` (inclusive) to ``end_day`` (exclusive),
    optionally of one user. Whole days: a key's total covers its whole day."""

    start_day: dt.date | None = None
    end_day: dt.date | None = None
    user_id: str | None = None


@dataclass
class KeyUsage:
    increment: rules.TokenUsageIncrement
    # Calls of the key whose session still has pending or parked events.
    in_flight: bool = False
    parked: bool = False


@dataclass
class DayUsage:
    day: dt.date
    keys: dict[Key, KeyUsage] = field(default_factory=dict)


def key_text(key: Key) -> str:
    user_id, day, request_type, intent = key
    return f"{user_id}|{day.isoformat()}|{request_type}|{intent}"


def _unsettled_by_session() -> Any:
    pending = sa.func.sum(sa.case((OUTBOX.c.status == "pending", 1), else_=0))
    parked = sa.func.sum(sa.case((OUTBOX.c.status == "dead", 1), else_=0))
    return (
        sa.select(OUTBOX.c.session_id, pending.label("pending"), parked.label("parked"))
        .where(OUTBOX.c.status.in_(("pending", "dead")))
        .group_by(OUTBOX.c.session_id)
        .subquery("unsettled")
    )


def select_call_page(
    connection: sa.Connection,
    after: tuple[dt.datetime, int] | None,
    limit: int,
    scope: UsageScope,
) -> list[Any]:
    """Calls with what the usage rule needs, in (call_time, id) order."""
    unsettled = _unsettled_by_session()
    query = (
        sa.select(
            C.c.id,
            C.c.call_id,
            C.c.session_id,
            C.c.user_id,
            C.c.query_type,
            C.c.call_time,
            C.c.total_tokens,
            C.c.cost,
            C.c.created_at,
            S.c.intent,
            unsettled.c.pending,
            unsettled.c.parked,
        )
        .join(S, S.c.session_id == C.c.session_id)
        .outerjoin(unsettled, unsettled.c.session_id == C.c.session_id)
        .order_by(C.c.call_time, C.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(C.c.call_time, C.c.id) > sa.tuple_(*after))
    if scope.start_day is not None:
        query = query.where(C.c.call_time >= _midnight(scope.start_day))
    if scope.end_day is not None:
        query = query.where(C.c.call_time < _midnight(scope.end_day))
    if scope.user_id is not None:
        query = query.where(C.c.user_id == scope.user_id)
    return list(connection.execute(query))


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


def call_increment(call: Any) -> rules.TokenUsageIncrement:
    """The TokenUsageAnalytics effect of one call, by the relay's rule."""
    event = events_pb2.OutboxEvent(session_id=call.session_id)
    event.occurred_at.CopyFrom(to_timestamp(call.created_at))
    recorded = event.llm_call_recorded
    recorded.user_id = call.user_id
    recorded.call_id = call.call_id
    recorded.total_tokens = call.total_tokens
    recorded.cost_usd = format(Decimal(call.cost).quantize(Decimal("0.00000001")), "f")
    recorded.call_time.CopyFrom(to_timestamp(call.call_time))
    recorded.session_query_type = call.query_type
    recorded.session_intent = call.intent or ""
    for effect in rules.effects_of(event, call.created_at):
        if isinstance(effect, rules.TokenUsageIncrement):
            return effect
    raise rules.RuleError("the LLM call rule gave no token usage")


def daily_usage(
    engine: sa.Engine, scope: UsageScope, page_size: int = 2000
) -> Iterator[DayUsage]:
    """Each UTC day with calls in ``scope``, with its keys' expected totals."""
    after: tuple[dt.datetime, int] | None = None
    current: DayUsage | None = None
    while True:
        with engine.connect() as connection:
            page = select_call_page(connection, after, page_size, scope)
        for call in page:
            day = call.call_time.date()
            if current is None or current.day != day:
                if current is not None:
                    yield current
                current = DayUsage(day)
            increment = call_increment(call)
            known = current.keys.get(increment.key)
            if known is None:
                known = current.keys[increment.key] = KeyUsage(increment)
            else:
                known.increment = known.increment.merged(increment)
            known.in_flight = known.in_flight or bool(call.pending)
            known.parked = known.parked or bool(call.parked)
        if len(page) < page_size:
            break
        after = (page[-1].call_time, page[-1].id)
    if current is not None:
        yield current


def _key_of(row: Any, prefix: str) -> Key:
    if prefix:
        return (row.user_id, row.usage_date, row.request_type, row.intent_type)
    return (row.UserId, row.Date, row.RequestType, row.IntentType)


def select_day_contributions(
    connection: sa.Connection, day: dt.date, user_id: str | None
) -> dict[Key, Any]:
    query = sa.select(CONTRIBUTIONS).where(CONTRIBUTIONS.c.usage_date == day)
    if user_id is not None:
        query = query.where(CONTRIBUTIONS.c.user_id == user_id)
    return {_key_of(row, "c"): row for row in connection.execute(query)}


def select_day_counters(
    connection: sa.Connection, day: dt.date, user_id: str | None
) -> dict[Key, Any]:
    query = sa.select(USAGE).where(USAGE.c.Date == day)
    if user_id is not None:
        query = query.where(USAGE.c.UserId == user_id)
    return {_key_of(row, ""): row for row in connection.execute(query)}


def select_contribution_days(
    connection: sa.Connection, scope: UsageScope
) -> list[dt.date]:
    """Days on which ProcessFlow says it added something (for extras)."""
    c = CONTRIBUTIONS.c
    query = (
        sa.select(c.usage_date)
        .where(c.total_requests > 0)
        .distinct()
        .order_by(c.usage_date)
    )
    if scope.start_day is not None:
        query = query.where(c.usage_date >= scope.start_day)
    if scope.end_day is not None:
        query = query.where(c.usage_date < scope.end_day)
    if scope.user_id is not None:
        query = query.where(c.user_id == scope.user_id)
    return [row.usage_date for row in connection.execute(query)]


def totals(row: Any, prefix: str) -> tuple[int, int, Decimal]:
    """(requests, tokens, cost) of a contribution (prefix "c") or counter row."""
    if row is None:
        return (0, 0, Decimal(0))
    if prefix:
        return (int(row.total_requests), int(row.total_tokens), _cost(row.total_cost))
    return (int(row.TotalRequests), int(row.TotalTokensUsed), _cost(row.TotalCost))


def _cost(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def expected_totals(usage: KeyUsage) -> tuple[int, int, Decimal]:
    inc = usage.increment
    return (inc.requests, inc.tokens, _cost(inc.cost))


def compare_day(
    day: DayUsage, contributions: dict[Key, Any], counters: dict[Key, Any]
) -> list[tuple[RowDiff, KeyUsage | None]]:
    """The day's differences, each with the key's usage (None for an extra)."""
    diffs: list[tuple[RowDiff, KeyUsage | None]] = []
    table = USAGE.name
    for key, usage in day.keys.items():
        text = key_text(key)
        contribution = contributions.get(key)
        counter = counters.get(key)
        expected = expected_totals(usage)
        if contribution is None or counter is None:
            diffs.append((RowDiff(table, "missing", text, ""), usage))
            continue
        mine = totals(contribution, "c")
        theirs = totals(counter, "")
        names = ("TotalRequests", "TotalTokensUsed", "TotalCost")
        off = tuple(
            f"contribution.{n}"
            for n, m, e in zip(names, mine, expected, strict=True)
            if m != e
        )
        low = tuple(
            n
            for n, t, m in zip(names, theirs, mine, strict=True)
            if Decimal(str(t)) < Decimal(str(m))
        )
        if off or low:
            diffs.append((RowDiff(table, "different", text, "", off + low), usage))
    for key, contribution in contributions.items():
        if key not in day.keys and int(contribution.total_requests) > 0:
            diffs.append((RowDiff(table, "extra", key_text(key), ""), None))
    return diffs


def scope_of(main: sa.Engine, scope: derive.SessionFilter) -> UsageScope | None:
    """The days (and user) whose keys the session filter touches; None if none."""
    if scope.session_id is None:
        return UsageScope(
            start_day=scope.since.date() if scope.since else None,
            end_day=(scope.until + dt.timedelta(days=1)).date()
            if scope.until
            else None,
        )
    calls = C.c
    query = (
        sa.select(
            calls.user_id, sa.func.min(calls.call_time), sa.func.max(calls.call_time)
        )
        .where(calls.session_id == scope.session_id)
        .group_by(calls.user_id)
    )
    with main.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    user_id, first, last = row
    return UsageScope(
        start_day=first.date(),
        end_day=last.date() + dt.timedelta(days=1),
        user_id=user_id,
    )
