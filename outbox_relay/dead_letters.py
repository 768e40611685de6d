"""Operator actions on parked (dead-lettered) outbox events.

Replay puts a parked event back in line: pending, no attempts, due now; its
session's later events then follow it in order, since they wait for it.
Skip gives up on it: 'discarded' counts as settled, so the rest of the
session goes on. Both act only on an event that is parked now, in one
UPDATE whose WHERE says so, which makes them safe against a running relay.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from outbox_relay.listener import OUTBOX_CHANNEL
from outbox_relay.outbox_store import DEAD, DISCARDED, PENDING, notify_sessions
from server.schema import outbox

_o = outbox.c


class DeadLetterError(LookupError):
    """The id names no event, or an event that is not parked."""


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event_id: str
    session_id: str
    sequence: int
    event_type: str
    status: str
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str | None
    created_at: dt.datetime
    payload: bytes


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        id=int(row.id),
        event_id=row.event_id,
        session_id=row.session_id,
        sequence=int(row.sequence),
        event_type=row.event_type,
        status=row.status,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        payload=bytes(row.payload),
    )


def _by_reference(reference: str) -> Any:
    """An event by its outbox id (a number) or its event id (a UUID)."""
    if reference.isdigit():
        return _o.id == int(reference)
    return _o.event_id == reference


def select_dead_events(
    connection: sa.Connection, limit: int = 1000
) -> list[StoredEvent]:
    rows = connection.execute(
        sa.select(outbox).where(_o.status == DEAD).order_by(_o.id).limit(limit)
    )
    return [_stored(row) for row in rows]


def select_event(connection: sa.Connection, reference: str) -> StoredEvent:
    row = connection.execute(sa.select(outbox).where(_by_reference(reference))).first()
    if row is None:
        raise DeadLetterError(f"no outbox event with id {reference}")
    return _stored(row)


def replay_dead_event(
    connection: sa.Connection, reference: str, now: dt.datetime
) -> StoredEvent:
    """Re-queues a parked event; raises DeadLetterError when it is not parked."""
    event = _require_dead(connection, reference)
    connection.execute(
        sa.update(outbox)
        .where(_o.id == event.id, _o.status == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=now)
    )
    notify_sessions(connection, OUTBOX_CHANNEL, [event.session_id])
    return event


def discard_dead_event(
    connection: sa.Connection, reference: str, now: dt.datetime
) -> StoredEvent:
    """Gives up on a parked event so that its session goes on."""
    event = _require_dead(connection, reference)
    connection.execute(
        sa.update(outbox)
        .where(_o.id == event.id, _o.status == DEAD)
        .values(status=DISCARDED, settled_at=now)
    )
    notify_sessions(connection, OUTBOX_CHANNEL, [event.session_id])
    return event


def _require_dead(connection: sa.Connection, reference: str) -> StoredEvent:
    query = sa.select(outbox).where(_by_reference(reference))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        raise DeadLetterError(f"no outbox event with id {reference}")
    event = _stored(row)
    if event.status != DEAD:
        raise DeadLetterError(
            f"outbox event {reference} is not parked (status {event.status})"
        )
    return event
