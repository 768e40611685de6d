"""``processflow demo`` against a real server, then the relay: both views
cover the demo's sessions."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_relay import legacy_schema as legacy
from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from processflow.client import Tracker
from processflow.db import create_engine
from processflow.v1 import resources_pb2 as res
from server import schema
from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.server import ServerProcess, start_server

PROCESSFLOW = [sys.executable, "-m", "processflow.cli"]
DEMO = [*PROCESSFLOW, "demo", "--sessions", "20", "--seed", "7"]
SUMMARY = re.compile(
    r"recorded (\d+) sessions \((\d+) by Ingest, (\d+) call by call\), (\d+) steps, "
    r"(\d+) LLM calls, ([\d,]+) tokens, \$([\d.]+)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_databases: SqliteDatabases,
    postgres_databases: PostgresDatabases | str,
) -> str:
    if request.param == "sqlite":
        return sqlite_databases.new(tmp_path)
    if isinstance(postgres_databases, str):
        pytest.fail(f"PostgreSQL unavailable: {postgres_databases}")
    return postgres_databases.new()


@pytest.fixture
def served(database: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(database, tmp_path / "server")
    try:
        yield server
    finally:
        server.terminate()


def drain_outbox(database_url: str, timeout: float = 120.0) -> int:
    relay = Relay(RelaySettings(database_url=database_url, batch_size=200))
    applied = 0
    deadline = time.monotonic() + timeout
    try:
        while (settled := relay.run_once()) > 0:
            applied += settled
            assert time.monotonic() < deadline, "the relay did not drain the outbox"
    finally:
        relay.close()
    return applied


def scalar(connection: sa.Connection, query: sa.Select[Any]) -> int:
    return int(connection.execute(query).scalar_one() or 0)


def test_demo_sessions_reach_both_views(served: ServerProcess, database: str) -> None:
    demo = subprocess.run(
        [*DEMO, "--target", served.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr
    summary = SUMMARY.search(demo.stdout)
    assert summary is not None, demo.stdout
    sessions, by_ingest, by_calls, steps, calls = map(int, summary.groups()[:5])
    tokens = int(summary[6].replace(",", ""))
    assert (sessions, by_ingest + by_calls) == (20, 20)
    assert by_ingest > 0 and by_calls > 0
    sample_id = re.search(r"sample session: (\S+)", demo.stdout)
    assert sample_id is not None

    assert drain_outbox(database) > 0
    verify = subprocess.run(
        [*PROCESSFLOW, "verify", "--database-url", database],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    engine = create_engine(database)
    try:
        with engine.connect() as db:
            count = sa.func.count()
            new_sessions = scalar(db, sa.select(count).select_from(schema.sessions))
            new_steps = scalar(db, sa.select(count).select_from(schema.steps))
            new_calls = scalar(db, sa.select(count).select_from(schema.llm_calls))
            new_tokens = scalar(
                db, sa.select(sa.func.sum(schema.llm_calls.c.total_tokens))
            )
            prompt_steps = scalar(
                db,
                sa.select(count).where(
                    schema.steps.c.step_type.in_(
                        ["prompt-building", "context-gathering", "prompt-assembly"]
                    )
                ),
            )
            error_sessions = scalar(
                db, sa.select(count).where(schema.sessions.c.status == "error")
            )
            failed_sql = scalar(
                db,
                sa.select(count).where(
                    schema.steps.c.step_type == "sql-execution",
                    schema.steps.c.status == "error",
                ),
            )
            users = scalar(
                db, sa.select(sa.func.count(sa.distinct(schema.sessions.c.user_id)))
            )
            models = scalar(
                db, sa.select(sa.func.count(sa.distinct(schema.llm_calls.c.model)))
            )
            starts = [
                row.start_time
                for row in db.execute(sa.select(schema.sessions.c.start_time))
            ]

            tracking = scalar(
                db, sa.select(count).select_from(legacy.prompt_success_tracking)
            )
            traces = scalar(
                db, sa.select(count).select_from(legacy.prompt_construction_traces)
            )
            construction_steps = scalar(
                db, sa.select(count).select_from(legacy.prompt_construction_steps)
            )
            usage_logs = scalar(db, sa.select(count).select_from(legacy.llm_usage_logs))
            usage = legacy.token_usage_analytics.c
            daily_requests = scalar(db, sa.select(sa.func.sum(usage.TotalRequests)))
            daily_tokens = scalar(db, sa.select(sa.func.sum(usage.TotalTokensUsed)))
            failed_in_legacy = scalar(
                db,
                sa.select(count).where(
                    legacy.prompt_success_tracking.c.SQLExecutionSuccess.is_(False)
                ),
            )
    finally:
        engine.dispose()

    # What the demo said it sent is what the server stored ...
    assert (new_sessions, new_steps, new_calls, new_tokens) == (
        sessions,
        steps,
        calls,
        tokens,
    )
    # ... and what the relay wrote covers it.
    assert tracking == traces == new_sessions == 20
    assert construction_steps == prompt_steps == 3 * 20
    assert usage_logs == daily_requests == new_calls
    assert daily_tokens == new_tokens
    assert failed_in_legacy == error_sessions
    # Realistic traffic: several users, models and days, and some failures.
    assert users >= 3 and models >= 3
    assert len({start.date() for start in starts}) >= 3
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert all(now - dt.timedelta(days=8) < start < now for start in starts)
    assert 0 < failed_sql < error_sessions < 20

    with Tracker(served.address) as pf:
        sample = pf.get_session(sample_id[1])
    assert sample.user_id == "john.doe@company.com"
    assert sample.query == "Show me total sales by region for last quarter"
    assert (sample.intent, sample.domain, sample.template) == (
        "aggregation",
        "sales",
        "sales_aggregation",
    )
    assert list(sample.tables_retrieved) == ["Sales", "Regions"]
    assert sample.generated_sql.startswith("SELECT r.RegionName, SUM(s.Amount)")
    assert sample.status == res.SESSION_STATUS_COMPLETED
    assert sample.coverage.status == res.COVERAGE_STATUS_COVERED
    (call,) = sample.llm_calls
    assert (call.provider, call.model, call.input_tokens, call.output_tokens) == (
        "openai",
        "gpt-4",
        1250,
        180,
    )
