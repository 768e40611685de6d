"""The relay's fast path on PostgreSQL: rows written with binary COPY, the
claim and the COPY sent on the driver, the shared-database batch marked
applied before it is applied, and several workers in one relay."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from outbox_relay import batch, legacy_schema, legacy_store, rules
from outbox_relay.relay import Relay
from processflow.db import create_engine
from server.schema import outbox
from tests.support.outbox import (
    SessionEvents,
    status_counts,
    typical_session,
    write_events,
)
from tests.support.polling import wait_for
from tests.support.relay import Target, count_rows, legacy_rows


def _llm_usage_row(call_id: str, **changes: Any) -> dict[str, Any]:
    session = typical_session("copy", user_id="u")
    event = next(e for e in session if e.WhichOneof("payload") == "llm_call_recorded")
    (insert, _usage) = rules.effects_of(event, rules.dt.datetime(2026, 1, 1))
    assert isinstance(insert, rules.RowInsert)
    return {**insert.values, "RequestId": call_id, **changes}


def _insert_usage_rows(url: str, rows: list[dict[str, Any]]) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            legacy_store.insert_rows(connection, legacy_schema.llm_usage_logs, rows)
    finally:
        engine.dispose()


def test_copy_rejects_an_integer_out_of_its_column_range(pg_url: str) -> None:
    # A binary int4 would wrap 2**31 + 5 around to a negative number; the
    # row must fail as an INSERT fails, with nothing written.
    rows = [_llm_usage_row("fits"), _llm_usage_row("big", InputTokens=2**31 + 5)]
    with pytest.raises(sa.exc.DataError) as raised:
        _insert_usage_rows(pg_url, rows)
    assert "out of range" in batch.describe_error(raised.value)
    assert not batch.must_abandon_batch(raised.value)
    assert count_rows(pg_url, "LLMUsageLogs") == 0

    edge = _llm_usage_row("edge", InputTokens=2**31 - 1)
    _insert_usage_rows(pg_url, [edge])
    (row,) = legacy_rows(pg_url, "LLMUsageLogs", "RequestId")
    assert row["InputTokens"] == 2**31 - 1
    assert row["Cost"] == edge["Cost"] > 0
    assert row["Timestamp"] == edge["Timestamp"]


def test_copy_errors_come_out_as_sqlalchemy_errors(pg_url: str) -> None:
    # The check constraint on an empty RequestId: the event's fault, so the
    # batch falls back to one event at a time instead of backing off.
    with pytest.raises(sa.exc.IntegrityError) as raised:
        _insert_usage_rows(pg_url, [_llm_usage_row("")])
    assert not batch.must_abandon_batch(raised.value)
    with pytest.raises(sa.exc.DataError):
        _insert_usage_rows(pg_url, [_llm_usage_row("long", UserId="u" * 300)])


def _settled_at_of_unsettled(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(outbox.c.settled_at).where(
                    outbox.c.status.in_(["pending", "dead"])
                )
            ).scalars()
        )


def test_events_marked_early_are_put_back_when_not_applied(pg_url: str) -> None:
    # Shared database: the whole claim is marked applied first. The failed
    # event and the one waiting behind it end as if never touched.
    relay = Relay(Target(pg_url, None).settings(max_attempts=3, batch_size=100))
    orphan = SessionEvents("orphan")
    orphan.sequence = 1  # its session_started was never written
    write_events(
        relay.outbox_engine,
        [
            *typical_session("kept"),
            orphan.step("p", "prompt-building", output_data="x"),
            orphan.completed(),
        ],
    )
    try:
        assert relay.settle_batch().failed == 1
    finally:
        relay.close()
    assert status_counts(relay.outbox_engine) == {"applied": 8, "pending": 2}
    assert _settled_at_of_unsettled(relay.outbox_engine) == [None, None]
    with relay.outbox_engine.connect() as connection:
        attempts = dict(
            connection.execute(
                sa.select(outbox.c.sequence, outbox.c.attempts).where(
                    outbox.c.session_id == "orphan"
                )
            ).all()
        )
    assert attempts == {2: 1, 3: 0}


@pytest.mark.parametrize("kind", ["sqlite_url", "pg_url"])
def test_run_settles_with_its_workers(
    request: pytest.FixtureRequest, kind: str
) -> None:
    url = str(request.getfixturevalue(kind))
    relay = Relay(Target(url, None).settings(batch_size=16))
    assert relay.workers == (1 if kind == "sqlite_url" else 2)
    events = [e for i in range(30) for e in typical_session(f"w-{i:02d}")]
    write_events(relay.outbox_engine, events)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: status_counts(relay.outbox_engine) == {"applied": len(events)},
            timeout=30,
            message="backlog drained",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
        relay.close()
    assert not thread.is_alive()
    names = {t.name for t in threading.enumerate()}
    assert not any(name.startswith("relay-worker") for name in names)
    assert count_rows(url, "processflow_applied_events") == len(events)
    assert count_rows(url, "PromptSuccessTracking") == 30
