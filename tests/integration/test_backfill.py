"""backfill restores full coverage after a truncated table, a switched-off
sink or history without outbox events; a second run changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outbox_relay import legacy_schema as ls
from outbox_relay.backfill import BackfillResult, ProgressFile, backfill, validate_sinks
from outbox_relay.derive import SessionFilter
from outbox_relay.verify import verify
from server import schema
from server.store import Store
from tests.integration.coverage_data import drain, relay_for, snapshot, write_session

ALL = validate_sinks([])


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    yield store
    store.close()


def covered(store: Store) -> bool:
    report = verify(store.engine, store.engine, SessionFilter(), page_size=3)
    return report.covered


def run(store: Store, sinks: frozenset[str] = ALL, **kwargs: Any) -> BackfillResult:
    return backfill(
        store.engine, store.engine, SessionFilter(), sinks, page_size=3, **kwargs
    )


def write_and_relay(store: Store, database_url: str, **relay_settings: object) -> None:
    for index, user in enumerate(("ann", "bob", "cid", "dee", "eve")):
        write_session(store, f"s{index}", user_id=user, day=index % 2)
    write_session(store, "s5", user_id="ann", calls=3)
    with relay_for(database_url, **relay_settings) as relay:
        drain(relay)


@pytest.mark.parametrize("table", [t.name for t in ls.LEGACY_TABLES])
def test_truncated_table_is_restored_and_second_run_changes_nothing(
    store: Store, database_url: str, table: str
) -> None:
    write_and_relay(store, database_url)
    assert covered(store)
    before = snapshot(store)
    with store.engine.begin() as connection:
        connection.execute(ls.metadata.tables[table].delete())
    assert not covered(store)

    first = run(store)
    assert first.inserted[table] > 0
    assert covered(store)
    assert snapshot(store) == before

    second = run(store)
    assert second.written == 0
    assert snapshot(store) == before


def test_switched_off_sink_is_filled_in(store: Store, database_url: str) -> None:
    write_and_relay(store, database_url, disabled_sinks=("LLMUsageLogs",))
    report = verify(store.engine, store.engine, SessionFilter())
    llm = report.tables["LLMUsageLogs"]
    assert llm.missing == llm.sink_off == llm.gaps == 13
    assert report.tables["PromptSuccessTracking"].gaps == 0

    result = run(store, validate_sinks(["LLMUsageLogs"]))
    assert result.inserted["LLMUsageLogs"] == 13
    assert result.written == 13
    assert covered(store)


def test_history_without_outbox_events(store: Store) -> None:
    write_session(store, "old-1", user_id="ann")
    write_session(store, "old-2", user_id="ann", complete=False)
    # As if these rows predated the service: no outbox events, no legacy rows.
    with store.engine.begin() as connection:
        connection.execute(schema.outbox.delete())
    assert not covered(store)

    run(store)
    assert covered(store)
    assert run(store).written == 0


def test_token_usage_is_rebuilt_not_added_twice(
    store: Store, database_url: str
) -> None:
    write_and_relay(store, database_url)
    usage = ls.token_usage_analytics
    with store.engine.begin() as connection:
        # Requests from before ProcessFlow on the same key stay on top.
        connection.execute(
            usage.update()
            .where(usage.c.UserId == "ann")
            .values(TotalRequests=usage.c.TotalRequests + 10)
        )
    # Two more calls of bob's key while the sink was switched off.
    write_session(store, "s6", user_id="bob", day=1)
    with relay_for(database_url, disabled_sinks=("TokenUsageAnalytics",)) as relay:
        drain(relay)
    assert not covered(store)

    run(store)
    run(store)
    rows = {row["UserId"]: row for row in snapshot(store)["TokenUsageAnalytics"]}
    # ann: 2 calls in s0 and 3 in s5, plus the 10 from before ProcessFlow.
    assert rows["ann"]["TotalRequests"] == "15"
    # bob: 2 calls in s1 (applied by the relay) and 2 in s6 (backfilled).
    assert rows["bob"]["TotalRequests"] == "4"
    assert rows["bob"]["TotalTokensUsed"] == str(2 * (120 + 121))
    assert covered(store)


def test_sessions_in_flight_are_left_to_the_relay(store: Store) -> None:
    write_session(store, "pending")
    result = run(store)
    assert result.left_to_relay == 1
    assert result.written == 0


def test_interrupted_run_continues_where_it_stopped(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    write_and_relay(store, database_url)
    with store.engine.begin() as connection:
        for table in reversed(ls.LEGACY_TABLES):
            connection.execute(table.delete())
    progress = ProgressFile(tmp_path / "progress.json", "scope-1")

    class Stop(Exception):
        pass

    def stop_after_first_page(phase: str, done: int, result: BackfillResult) -> None:
        raise Stop

    with pytest.raises(Stop):
        run(store, progress=progress, report=stop_after_first_page)
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["phase"] == "sessions" and saved["after"] == "s2"

    resumed = run(store, progress=progress)
    assert resumed.sessions == 3  # s3, s4, s5
    assert not (tmp_path / "progress.json").exists()
    assert covered(store)
