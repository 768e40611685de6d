"""Statements on the outbox: claim, acknowledge, retry, dead-letter, prune.

Claiming takes row locks, never leases. Inside an open transaction the relay
selects pending events that are due and have no earlier unsettled event in
their session, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, then -- in the same
transaction -- the following pending events of the sessions it got. The
locks last until the batch is settled and vanish with a dead connection, so
nothing needs rescuing and no two relays ever hold events of one session.
The outbox is never read by a high-water mark: ids are assigned at insert,
not at commit, so a cursor would skip late commits.

SQLite has no row locks: its BEGIN IMMEDIATE (processflow/db.py) serialises
writers, which makes the same query safe there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from outbox_relay.pg_arrays import BinaryArray, array_parameter
from processflow.db import driver_cursor, is_postgresql
from server.schema import outbox

PENDING = "pending"
APPLIED = "applied"
DEAD = "dead"
DISCARDED = "discarded"
SETTLED = (APPLIED, DISCARDED)

_o = outbox.c
# Status values are written into the SQL, not bound: the planner can then use
# the partial index on pending events even in a prepared (generic) plan.
_IS_PENDING = _o.status == sa.literal_column("'pending'")


@dataclass(frozen=True)
class ClaimedEvent:
    id: int
    event_id: str
    session_id: str
    sequence: int
    event_type: str
    payload: bytes
    attempts: int


_COLUMNS = (
    _o.id,
    _o.event_id,
    _o.session_id,
    _o.sequence,
    _o.event_type,
    _o.payload,
    _o.attempts,
)


def _claimed(row: Any) -> ClaimedEvent:
    return ClaimedEvent(
        id=int(row.id),
        event_id=str(row.event_id),
        session_id=str(row.session_id),
        sequence=int(row.sequence),
        event_type=str(row.event_type),
        payload=bytes(row.payload),
        attempts=int(row.attempts),
    )


# A batch is filled in rounds: a share of the batch in sessions' first
# events, then those sessions' following events, then more sessions sized
# by the runs seen so far. Whole runs let the legacy side merge a session's
# row updates into one; short sessions still fill the batch in a round or two.
FIRST_HEADS_SHARE = 8
MAX_CLAIM_ROUNDS = 3


def claim_pending_events(
    connection: sa.Connection, now: dt.datetime, limit: int
) -> list[ClaimedEvent]:
    """Claims up to ``limit`` events, ordered by session and sequence; each
    session's events form a run from its first unsettled event."""
    claimed: list[ClaimedEvent] = []
    sessions = 0
    wanted = max(1, limit // FIRST_HEADS_SHARE)
    for _ in range(MAX_CLAIM_ROUNDS):
        room = limit - len(claimed)
        claimed_ids = [e.id for e in claimed]
        if is_postgresql(connection):
            events, heads = _claim_round(connection, now, wanted, room, claimed_ids)
        else:
            head_events = _claim_heads(connection, now, wanted, claimed_ids)
            events, heads = head_events, len(head_events)
            if head_events and len(head_events) < room:
                events += _claim_runs(connection, head_events, room - heads)
        claimed += events
        sessions += heads
        room = limit - len(claimed)
        if heads < wanted or room <= 0:
            break
        wanted = max(1, min(room, room * sessions // len(claimed)))
    return _contiguous(_ordered(claimed))


# One round on PostgreSQL, in one statement: lock up to %(heads)s heads (the
# query of _claim_heads), then return them first and their sessions' other
# pending events after them (those of _claim_runs), up to %(room)s in all.
# Heads come first so that the limit only ever cuts a run, never a head.
# The text is fixed, so PostgreSQL prepares it once, and it runs on the
# driver directly: the batch's hottest rows skip SQLAlchemy's row objects.
_CLAIM_ROUND = """
WITH heads AS MATERIALIZED (
    SELECT o.id, o.session_id
    FROM process_flow_outbox AS o
    WHERE o.status = 'pending'
      AND o.next_attempt_at <= %(now)s
      AND o.id <> ALL(%(claimed)s::bigint[])
      AND NOT EXISTS (
          SELECT 1 FROM process_flow_outbox AS previous
          WHERE previous.session_id = o.session_id
            AND previous.sequence = o.sequence - 1
            AND previous.status IN ('pending', 'dead')
      )
    ORDER BY o.id
    LIMIT %(heads)s
    FOR UPDATE OF o SKIP LOCKED
)
SELECT o.id, o.event_id, o.session_id, o.sequence, o.event_type, o.payload,
       o.attempts, o.id = heads.id AS head
FROM process_flow_outbox AS o
JOIN heads ON heads.session_id = o.session_id
WHERE o.status = 'pending'
ORDER BY o.id = heads.id DESC, o.session_id, o.sequence
LIMIT %(room)s
FOR UPDATE OF o SKIP LOCKED
"""


def _claim_round(
    connection: sa.Connection,
    now: dt.datetime,
    heads: int,
    room: int,
    claimed_ids: list[int],
) -> tuple[list[ClaimedEvent], int]:
    """(events claimed, how many of them are heads)."""
    with driver_cursor(connection, _CLAIM_ROUND) as cursor:
        cursor.execute(
            _CLAIM_ROUND,
            {
                "now": now,
                "claimed": BinaryArray(claimed_ids),
                "heads": heads,
                "room": room,
            },
            prepare=True,
            # Payloads come as they are stored, not hex-encoded and decoded.
            binary=True,
        )
        rows = cursor.fetchall()
    events = [ClaimedEvent(*row[:7]) for row in rows]
    return events, sum(1 for row in rows if row[7])


def _claim_heads(
    connection: sa.Connection,
    now: dt.datetime,
    limit: int,
    claimed_ids: list[int],
) -> list[ClaimedEvent]:
    """Due pending events whose session has no earlier unsettled event."""
    locking = is_postgresql(connection)
    # Unsettled events of a session always form a suffix of its sequence
    # (events settle in order; a skip or replay only touches the first
    # unsettled one), so "no earlier unsettled event" is "the previous one
    # is settled or pruned": a probe of the unique (session_id, sequence)
    # index, which no planner misestimates.
    previous = outbox.alias("previous")
    previous_unsettled = (
        sa.select(previous.c.id)
        .where(
            previous.c.session_id == _o.session_id,
            previous.c.sequence == _o.sequence - 1,
            previous.c.status.in_(
                [sa.literal_column("'pending'"), sa.literal_column("'dead'")]
            ),
        )
        .exists()
    )
    query = (
        sa.select(*_COLUMNS)
        .where(_IS_PENDING, _o.next_attempt_at <= now, ~previous_unsettled)
        .order_by(_o.id)
        .limit(limit)
    )
    if claimed_ids:
        # Our own locks do not hide rows from us: leave out what we hold.
        query = query.where(_not_in(connection, _o.id, claimed_ids))
    if locking:
        query = query.with_for_update(skip_locked=True, of=outbox)
    return [_claimed(row) for row in connection.execute(query)]


def _claim_runs(
    connection: sa.Connection, heads: list[ClaimedEvent], limit: int
) -> list[ClaimedEvent]:
    """The pending events after ``heads`` in their sessions. No other relay
    can hold them: each waits for its predecessor, which we hold."""
    sessions = sorted({event.session_id for event in heads})
    head_ids = [event.id for event in heads]
    if is_postgresql(connection):
        in_sessions = _o.session_id == sa.any_(
            array_parameter("sessions", sessions, sa.Text())
        )
    else:
        in_sessions = _o.session_id.in_(sessions)
    query = (
        sa.select(*_COLUMNS)
        .where(in_sessions, _IS_PENDING, _not_in(connection, _o.id, head_ids))
        .order_by(_o.session_id, _o.sequence)
        .limit(limit)
    )
    if is_postgresql(connection):
        query = query.with_for_update(skip_locked=True, of=outbox)
    return [_claimed(row) for row in connection.execute(query)]


def _not_in(connection: sa.Connection, column: Any, ids: list[int]) -> Any:
    if is_postgresql(connection):
        return column != sa.all_(array_parameter("ids", ids, sa.BigInteger()))
    return column.not_in(ids)


def _ordered(events: list[ClaimedEvent]) -> list[ClaimedEvent]:
    return sorted(events, key=lambda event: (event.session_id, event.sequence))


def _contiguous(events: list[ClaimedEvent]) -> list[ClaimedEvent]:
    # A run ends at its first gap: an event after it must wait for the next
    # batch. (A gap cannot happen while the contract holds; this keeps order
    # safe even if it did.)
    kept: list[ClaimedEvent] = []
    for event in events:
        if (
            kept
            and kept[-1].session_id == event.session_id
            and event.sequence != kept[-1].sequence + 1
        ):
            continue
        kept.append(event)
    return kept


def mark_events_applied(
    connection: sa.Connection, ids: Sequence[int], now: dt.datetime
) -> None:
    if not ids:
        return
    if is_postgresql(connection):
        matches = _o.id == sa.any_(array_parameter("ids", ids, sa.BigInteger()))
    else:
        matches = _o.id.in_(list(ids))
    connection.execute(
        sa.update(outbox).where(matches).values(status=APPLIED, settled_at=now)
    )


def mark_events_pending(connection: sa.Connection, ids: Sequence[int]) -> None:
    """Puts events marked applied earlier in the transaction back as they
    were: pending, never settled (their attempts were not touched)."""
    if not ids:
        return
    connection.execute(
        sa.update(outbox)
        .where(_o.id.in_(list(ids)))
        .values(status=PENDING, settled_at=None)
    )


def record_event_failure(
    connection: sa.Connection,
    event_id: int,
    *,
    attempts: int,
    next_attempt_at: dt.datetime,
    error: str,
    dead: bool,
) -> None:
    connection.execute(
        sa.update(outbox)
        .where(_o.id == event_id)
        .values(
            status=DEAD if dead else PENDING,
            settled_at=None,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=error,
        )
    )


def notify_sessions(
    connection: sa.Connection, channel: str, session_ids: Sequence[str]
) -> None:
    """pg_notify once per session, delivered when the transaction commits."""
    if session_ids and is_postgresql(connection):
        connection.execute(
            sa.text(
                "SELECT pg_notify(:channel, session_id) "
                "FROM unnest(CAST(:session_ids AS text[])) AS session_id"
            ),
            {"channel": channel, "session_ids": BinaryArray(session_ids)},
        )


def delete_settled_events(
    connection: sa.Connection, settled_before: dt.datetime, limit: int
) -> int:
    """Deletes at most ``limit`` settled events older than ``settled_before``."""
    oldest = (
        sa.select(_o.id)
        .where(_o.status.in_(SETTLED), _o.settled_at < settled_before)
        .order_by(_o.id)
        .limit(limit)
    )
    result = connection.execute(sa.delete(outbox).where(_o.id.in_(oldest)))
    return int(result.rowcount)
