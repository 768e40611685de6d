"""verify finds every kind of difference, names it, and tells in-flight and
parked differences from real gaps; on one database or two."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa

from outbox_relay import legacy_schema as ls
from outbox_relay.derive import SessionFilter
from outbox_relay.verify import CoverageReport, verify
from processflow.db import create_engine
from server import schema
from server.store import Store
from tests.integration.coverage_data import BASE, drain, relay_for, write_session

PST = ls.prompt_success_tracking
TRACES = ls.prompt_construction_traces
STEPS = ls.prompt_construction_steps
USAGE = ls.token_usage_analytics
LLM = ls.llm_usage_logs
CONTRIBUTIONS = ls.token_usage_contributions


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    yield store
    store.close()


def check(
    store: Store, legacy: sa.Engine | None = None, **scope: object
) -> CoverageReport:
    return verify(
        store.engine,
        legacy or store.engine,
        SessionFilter(**scope),  # type: ignore[arg-type]
        page_size=2,
    )


def counts(report: CoverageReport, table: str) -> tuple[int, int, int]:
    t = report.tables[table]
    return (t.missing, t.different, t.extra)


def samples(report: CoverageReport, table: str, kind: str) -> list[str]:
    return [s["key"] for s in report.tables[table].samples if s["kind"] == kind]


def copy_row(
    connection: sa.Connection, table: sa.Table, where: object, **changes: object
) -> None:
    row = dict(connection.execute(sa.select(table).where(where)).mappings().one())  # type: ignore[arg-type]
    if "Id" in row and isinstance(row["Id"], int):
        del row["Id"]
    row.update(changes)
    connection.execute(table.insert().values(row))


def test_in_flight_then_covered(store: Store, database_url: str) -> None:
    for name in ("a", "b", "c"):
        write_session(store, name, user_id=name)
    write_session(store, "open", complete=False)

    before = check(store)
    assert not before.covered
    assert before.sessions == 4
    assert before.total("gaps") == 0
    assert before.tables[PST.name].missing == 4
    assert before.tables[PST.name].in_flight == 4
    assert before.tables[LLM.name].in_flight == 8
    assert before.tables[USAGE.name].in_flight == before.tables[USAGE.name].missing == 4

    with relay_for(database_url) as relay:
        drain(relay)
    after = check(store)
    assert after.covered, after.as_dict()
    assert after.tables[STEPS.name].expected == after.tables[STEPS.name].present == 8
    assert after.tables[LLM.name].present == 8


def test_parked_sessions_are_reported_as_parked(
    store: Store, database_url: str
) -> None:
    write_session(store, "ok")
    write_session(store, "stuck")
    with store.engine.begin() as connection:
        connection.execute(
            schema.outbox.update()
            .where(schema.outbox.c.session_id == "stuck", schema.outbox.c.sequence == 1)
            .values(status="dead", last_error="boom")
        )
    with relay_for(database_url) as relay:
        drain(relay)

    report = check(store)
    assert not report.covered
    assert report.total("gaps") == 0
    assert report.tables[PST.name].parked == 1
    assert samples(report, PST.name, "missing") == ["stuck"]
    assert report.tables[PST.name].samples[0]["status"] == "parked"


def test_each_kind_of_gap_is_found_and_named(store: Store, database_url: str) -> None:
    for name in ("a", "b", "c", "d"):
        write_session(store, name, user_id=name)
    write_session(store, "e", user_id="e", prompt_steps=False)
    with relay_for(database_url) as relay:
        drain(relay)
    assert check(store).covered

    day = BASE.date()
    with store.engine.begin() as c:
        # PromptSuccessTracking: deleted, altered, duplicated.
        c.execute(PST.delete().where(PST.c.SessionId == "a"))
        c.execute(PST.update().where(PST.c.SessionId == "b").values(UserQuestion="?"))
        copy_row(c, PST, PST.c.SessionId == "c")
        # PromptConstructionTraces: deleted (no steps hang on it), altered, extra.
        c.execute(TRACES.delete().where(TRACES.c.TraceId == "trace-e"))
        c.execute(
            TRACES.update().where(TRACES.c.TraceId == "trace-b").values(IntentType="x")
        )
        copy_row(
            c, TRACES, TRACES.c.TraceId == "trace-c", Id="ghost", TraceId="trace-ghost"
        )
        # PromptConstructionSteps: one deleted, one altered, one unknown.
        d_rows = (
            c.execute(
                sa.select(STEPS.c.Id)
                .where(STEPS.c.TraceId == "trace-d")
                .order_by(STEPS.c.Id)
            )
            .scalars()
            .all()
        )
        c.execute(STEPS.delete().where(STEPS.c.Id == d_rows[0]))
        c.execute(
            STEPS.update().where(STEPS.c.Id == d_rows[1]).values(Content="changed")
        )
        copy_row(c, STEPS, STEPS.c.Id == d_rows[1], Id="bogus", TraceId="trace-c")
        # LLMUsageLogs: deleted, altered, extra that claims a session.
        c.execute(LLM.delete().where(LLM.c.RequestId == "a-call-0"))
        c.execute(
            LLM.update().where(LLM.c.RequestId == "b-call-0").values(TotalTokens=1)
        )
        copy_row(
            c,
            LLM,
            LLM.c.RequestId == "c-call-0",
            RequestId="ghost-call",
            Metadata='{"session_id":"ghost"}',
        )
        # TokenUsageAnalytics: deleted, a counter off by one, a contribution
        # for calls that do not exist.
        c.execute(USAGE.delete().where(USAGE.c.UserId == "c"))
        c.execute(
            USAGE.update()
            .where(USAGE.c.UserId == "d")
            .values(TotalTokensUsed=USAGE.c.TotalTokensUsed - 1)
        )
        c.execute(
            CONTRIBUTIONS.insert().values(
                user_id="zed",
                usage_date=day,
                request_type="enhanced",
                intent_type="report",
                total_requests=1,
                total_tokens=10,
                total_cost=Decimal("0.1"),
                updated_at=dt.datetime(2026, 3, 1),
            )
        )

    report = check(store)
    assert not report.covered
    for table in (PST, TRACES, STEPS, LLM, USAGE):
        assert counts(report, table.name) == (1, 1, 1), (table.name, report.as_dict())
        assert report.tables[table.name].gaps == 3
        assert report.tables[table.name].in_flight == 0
    assert samples(report, PST.name, "missing") == ["a"]
    assert samples(report, PST.name, "different") == ["b"]
    assert samples(report, PST.name, "extra") == ["c"]
    different = [s for s in report.tables[PST.name].samples if s["kind"] == "different"]
    assert different[0]["columns"] == ["UserQuestion"]
    assert samples(report, TRACES.name, "missing") == ["trace-e"]
    assert samples(report, TRACES.name, "extra") == ["trace-ghost"]
    assert samples(report, STEPS.name, "missing") == [d_rows[0]]
    assert samples(report, STEPS.name, "extra") == ["bogus"]
    assert samples(report, LLM.name, "missing") == ["a-call-0"]
    assert samples(report, LLM.name, "different") == ["b-call-0"]
    assert samples(report, LLM.name, "extra") == ["ghost-call"]
    assert samples(report, USAGE.name, "missing") == [f"c|{day}|enhanced|report"]
    assert samples(report, USAGE.name, "different") == [f"d|{day}|enhanced|report"]
    assert samples(report, USAGE.name, "extra") == [f"zed|{day}|enhanced|report"]

    # One session: only its own rows and the usage keys its calls touch.
    one = check(store, session_id="a")
    assert counts(one, PST.name) == (1, 0, 0)
    assert counts(one, LLM.name) == (1, 0, 0)
    assert counts(one, USAGE.name) == (0, 0, 0)


def test_separate_legacy_database(sqlite_url: str, pg_url: str) -> None:
    store = Store.connect(sqlite_url)
    legacy = create_engine(pg_url)
    try:
        write_session(store, "s1")
        write_session(store, "s2", day=1)
        with relay_for(sqlite_url, pg_url) as relay:
            drain(relay)
        assert check(store, legacy).covered
        # The main database's own (unused) legacy tables are empty: a verify
        # against them would see everything missing.
        assert check(store).tables[PST.name].missing == 2

        with legacy.begin() as connection:
            connection.execute(LLM.delete().where(LLM.c.RequestId == "s2-call-1"))
        report = check(store, legacy, since=BASE + dt.timedelta(hours=12))
        assert report.sessions == 1
        assert counts(report, LLM.name) == (1, 0, 0)
        assert samples(report, LLM.name, "missing") == ["s2-call-1"]
    finally:
        store.close()
        legacy.dispose()
