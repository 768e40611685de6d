"""Several relays on one PostgreSQL outbox, under load: no event applied
twice, and each session's events reach the legacy side in sequence order.

The legacy side records the order it saw events in: a trigger on the ledger
copies every inserted row into a table keyed by a sequence, which grows in
insertion order whichever relay inserted."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
import sqlalchemy as sa

from outbox_relay.relay import BatchResult, Relay
from processflow.db import create_engine
from tests.support.outbox import status_counts, typical_session, write_events
from tests.support.polling import wait_for
from tests.support.relay import Target, count_rows, legacy_rows, make_target

SESSIONS = 150
EVENTS_PER_SESSION = 8
USERS = 3

ORDER_TRIGGER = """
CREATE TABLE test_applied_order (
    n BIGSERIAL PRIMARY KEY, session_id TEXT NOT NULL, sequence BIGINT NOT NULL
);
CREATE FUNCTION test_record_applied() RETURNS trigger AS $$
BEGIN
    INSERT INTO test_applied_order (session_id, sequence)
    VALUES (NEW.session_id, NEW.sequence);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_applied_order AFTER INSERT ON processflow_applied_events
FOR EACH ROW EXECUTE FUNCTION test_record_applied();
"""


class CountingRelay(Relay):
    applied = 0

    def settle_batch(self) -> BatchResult:
        result = super().settle_batch()
        self.applied += result.applied
        return result


def _write_interleaved(engine: sa.Engine) -> None:
    """Writes event k of every session before event k+1 of any, in small
    transactions, so relays see sessions grow while they work."""
    sessions = [
        typical_session(f"c-{i:03d}", user_id=f"user-{i % USERS}")
        for i in range(SESSIONS)
    ]
    for k in range(EVENTS_PER_SESSION):
        for start in range(0, SESSIONS, 25):
            write_events(engine, [s[k] for s in sessions[start : start + 25]])


@pytest.mark.parametrize(
    ("relays", "kind"), [(2, "postgresql"), (4, "postgresql+postgresql")]
)
def test_relays_never_duplicate_and_keep_session_order(
    request: pytest.FixtureRequest, relays: int, kind: str
) -> None:
    target: Target = make_target(request, kind)
    legacy = create_engine(target.legacy_url)
    with legacy.begin() as connection:
        connection.exec_driver_sql(ORDER_TRIGGER)
    legacy.dispose()

    workers = [CountingRelay(target.settings(batch_size=20)) for _ in range(relays)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers
    ]
    for thread in threads:
        thread.start()
    engine = workers[0].outbox_engine
    total = SESSIONS * EVENTS_PER_SESSION
    try:
        _write_interleaved(engine)
        wait_for(
            lambda: status_counts(engine) == {"applied": total},
            timeout=60,
            interval=0.1,
            message="every event applied",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for worker in workers:
            worker.close()

    url = target.legacy_url
    assert sum(w.applied for w in workers) == total
    assert sum(1 for w in workers if w.applied) >= 2, "relays did not share the work"

    order = legacy_rows_in_order(url)
    assert len(order) == total
    seen: dict[str, list[int]] = defaultdict(list)
    for session_id, sequence in order:
        seen[session_id].append(sequence)
    assert all(s == list(range(1, 9)) for s in seen.values()), "order broken"
    assert len(seen) == SESSIONS

    assert count_rows(url, "processflow_applied_events") == total
    assert count_rows(url, "PromptSuccessTracking") == SESSIONS
    assert count_rows(url, "PromptConstructionTraces") == SESSIONS
    assert count_rows(url, "PromptConstructionSteps") == 2 * SESSIONS
    calls = legacy_rows(url, "LLMUsageLogs", "RequestId")
    assert len({c["RequestId"] for c in calls}) == len(calls) == 2 * SESSIONS
    usage = legacy_rows(url, "TokenUsageAnalytics", "UserId")
    assert [(u["UserId"], u["TotalRequests"], u["TotalTokensUsed"]) for u in usage] == [
        (f"user-{n}", 2 * SESSIONS // USERS, 200 * SESSIONS // USERS)
        for n in range(USERS)
    ]
    contributions = legacy_rows(url, "processflow_token_usage_contributions", "user_id")
    assert [(c["total_requests"], c["total_cost"]) for c in contributions] == [
        (u["TotalRequests"], u["TotalCost"]) for u in usage
    ]


def legacy_rows_in_order(url: str) -> list[tuple[str, int]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT session_id, sequence FROM test_applied_order ORDER BY n"
            )
            return [(r.session_id, int(r.sequence)) for r in rows]
    finally:
        engine.dispose()
