"""Writes to one session that race each other on PostgreSQL."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.store import Store
from tests.integration.store_helpers import T, outbox_events, start
from tests.support.polling import wait_for


def test_completion_event_sees_a_call_committed_while_it_waited(pg_url: str) -> None:
    store = Store.connect(pg_url)
    try:
        store.start_session(T, start("race"))
        store.record_llm_call(
            T,
            pb.RecordLlmCallRequest(
                session_id="race", call_id="c1", input_tokens=10, output_tokens=5
            ),
        )
        # Another writer holds the session row, as a concurrent RecordLlmCall
        # does, and adds to the roll-up before it commits.
        other = store.engine.connect()
        blocker = other.begin()
        other.execute(
            sa.select(schema.sessions.c.id)
            .where(schema.sessions.c.session_id == "race")
            .with_for_update()
        )
        other.execute(
            schema.transparency.update()
            .where(schema.transparency.c.session_id == "race")
            .values(
                total_tokens=schema.transparency.c.total_tokens + 100,
                api_call_count=schema.transparency.c.api_call_count + 1,
            )
        )
        done = threading.Event()

        def complete() -> None:
            store.complete_session(
                T,
                pb.CompleteSessionRequest(
                    session_id="race", status=res.SESSION_STATUS_COMPLETED
                ),
            )
            done.set()

        worker = threading.Thread(target=complete)
        worker.start()
        wait_for(
            lambda: _waiting_for_lock(store),
            message="CompleteSession waiting for the session lock",
        )
        blocker.commit()
        other.close()
        worker.join(timeout=30)
        assert done.is_set()

        completed = [
            e
            for e in outbox_events(store)
            if e.WhichOneof("payload") == "session_completed"
        ]
        assert len(completed) == 1
        assert completed[0].session_completed.total_tokens == 115
        assert completed[0].session_completed.api_call_count == 2
    finally:
        store.close()


def _waiting_for_lock(store: Store) -> bool:
    with store.engine.connect() as connection:
        waiting = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)
