"""The outbox writer: events are built while a write runs and inserted with
one statement just before its transaction commits (deferred into the
COMMIT's pipeline; with COPY when there are many, as in an Ingest).

Sequence numbers come from process_flow_sessions.event_sequence, bumped by the
same transaction (see sessions.lock_session); the bump takes the session row's
lock on PostgreSQL, so two writers of one session cannot interleave and the
numbers have no gaps.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from processflow.v1 import events_pb2
from server import schema
from server.store.transaction import WriteContext, copy_rows


def add_event(
    context: WriteContext, session_id: str, sequence: int, kind: str, payload: Any
) -> events_pb2.OutboxEvent:
    """Queues one event of the write; ``kind`` names the payload oneof case."""
    event = events_pb2.OutboxEvent(
        event_id=str(uuid.uuid4()),
        session_id=session_id,
        sequence=sequence,
        occurred_at=context.now_timestamp,
        tenant_id=context.tenant_id,
    )
    getattr(event, kind).CopyFrom(payload)
    context.events.append(event)
    return event


# From this many events on, COPY (one more round trip) beats INSERTs in the
# COMMIT's pipeline (one statement per row for the server to run).
COPY_MIN_EVENTS = 16


@functools.cache
def _insert_events_statement() -> Any:
    # inline(): no RETURNING of the new id, which a pipelined statement could
    # not hand back before the COMMIT.
    return schema.outbox.insert().inline()


def insert_outbox_events(context: WriteContext) -> None:
    events = context.events
    if not events:
        return
    now = context.now
    rows = [
        {
            "event_id": event.event_id,
            "session_id": event.session_id,
            "sequence": event.sequence,
            "event_type": event.WhichOneof("payload"),
            "payload": event.SerializeToString(),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for event in events
    ]
    if context.postgresql and len(rows) >= COPY_MIN_EVENTS:
        copy_rows(context, schema.outbox, rows)
    else:
        context.defer(_insert_events_statement(), rows)


def flush_events(context: WriteContext) -> None:
    # Looked up through the module at call time so that a test can inject a
    # fault exactly between the row writes and the outbox write.
    insert_outbox_events(context)
