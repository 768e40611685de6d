"""Shared pieces of the store tests."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from server import schema
from server.store import Store

T = ""  # tenant


def outbox_events(store: Store) -> list[events_pb2.OutboxEvent]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(schema.outbox).order_by(
                schema.outbox.c.session_id, schema.outbox.c.sequence
            )
        ).mappings()
        events = []
        for row in rows:
            event = events_pb2.OutboxEvent.FromString(row["payload"])
            assert event.WhichOneof("payload") == row["event_type"]
            assert event.sequence == row["sequence"]
            assert event.event_id == row["event_id"]
            assert row["status"] == "pending"
            assert row["next_attempt_at"] == row["created_at"]
            events.append(event)
    return events


def count_rows(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
        )


def all_counts(store: Store) -> dict[str, int]:
    return {
        table.name: count_rows(store, table)
        for table in (
            schema.sessions,
            schema.steps,
            schema.logs,
            schema.llm_calls,
            schema.transparency,
            schema.outbox,
            schema.requests,
        )
    }


def start(session_id: str = "s1", **fields: Any) -> pb.StartSessionRequest:
    return pb.StartSessionRequest(
        **{"session_id": session_id, "user_id": "alice", "query": "How many?", **fields}
    )
