"""Applying one claimed batch to the legacy database, exactly once.

Within the caller's legacy transaction: the batch's ledger rows are fetched
in one query, and events already in the ledger are acknowledged without a
second effect. The rest are applied in one go inside a savepoint: each event
is decoded and turned into legacy rows once, then every table is written
with a few statements for the whole batch (outbox_relay.legacy_store), the
ledger rows with them. Only when that fails are they applied again one by
one, each in its own savepoint, so a poison event costs its own session and
nothing else: its later events in the batch are left pending behind it.

Connection errors and conflicts (deadlocks, lock timeouts) are no event's
fault: they propagate, the whole batch rolls back without counting attempts,
and the relay backs off as a whole or tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from outbox_relay import legacy_store, rules
from outbox_relay.outbox_store import ClaimedEvent

log = logging.getLogger(__name__)

ERROR_TEXT_CHARS = 1000


@dataclass
class PlannedEvent:
    claimed: ClaimedEvent
    effects: list[rules.Effect]
    skipped_sinks: tuple[str, ...]

    def ledger_row(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "event_id": self.claimed.event_id,
            "session_id": self.claimed.session_id,
            "sequence": self.claimed.sequence,
            "event_type": self.claimed.event_type,
            "skipped_sinks": ",".join(self.skipped_sinks),
            "origin": "outbox",
            "applied_at": now,
        }


@dataclass
class BatchOutcome:
    applied: list[ClaimedEvent] = field(default_factory=list)
    # Events that were already in the ledger (a redelivery); part of applied.
    redelivered: int = 0
    failed: list[tuple[ClaimedEvent, str]] = field(default_factory=list)
    # Later events of a failed session: left pending, untouched.
    waiting: list[ClaimedEvent] = field(default_factory=list)
    # (sinks written, sinks skipped) of each event the rules accepted, by
    # outbox id, for metrics that would otherwise decode the batch again.
    sinks: dict[int, tuple[set[str], tuple[str, ...]]] = field(default_factory=dict)


# MySQL/MariaDB server errors that mean the connection is gone or refused;
# client errors (2000-2999) always do. PyMySQL raises OperationalError for
# many other server errors too (a failed CHECK constraint, say).
_MYSQL_CONNECTION_ERRORS = frozenset({1040, 1053, 1077, 1152, 1184, 1927, 4031})
_MYSQL_CONFLICTS = frozenset({1205, 1213})


def _driver_code(error: sa.exc.DBAPIError) -> tuple[str | None, int | None]:
    """(SQLSTATE from psycopg, error number from PyMySQL)."""
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    return sqlstate, code


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` means a database is unreachable (not a bad event)."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa.exc.InterfaceError):
        return True
    if not isinstance(error, sa.exc.OperationalError):
        return False
    sqlstate, code = _driver_code(error)
    if hasattr(error.orig, "sqlstate"):
        # psycopg: no SQLSTATE is a client-side failure (refused, reset);
        # 08 connection, 53 resources, 57 shutdown or cancel.
        return sqlstate is None or sqlstate[:2] in ("08", "53", "57")
    if code is not None:
        return 2000 <= code < 3000 or code in _MYSQL_CONNECTION_ERRORS
    # SQLite: locked, busy or unopenable files; none is the event's fault.
    return True


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` is a deadlock or lock timeout: the whole transaction
    is gone, and trying the batch again is the answer."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    sqlstate, code = _driver_code(error)
    if sqlstate is not None:
        return sqlstate.startswith("40") or sqlstate == "55P03"
    return code in _MYSQL_CONFLICTS


def must_abandon_batch(error: BaseException) -> bool:
    """Errors that are no event's fault: the batch rolls back, no attempt counts."""
    return is_connection_error(error) or is_conflict(error)


def describe_error(error: BaseException) -> str:
    """The error for last_error: the driver's first line, never the statement
    or its parameters (which could carry user data)."""
    cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:ERROR_TEXT_CHARS]


def filter_sinks(
    effects: list[rules.Effect], disabled: Collection[str]
) -> tuple[list[rules.Effect], tuple[str, ...]]:
    """Drops the effects on switched-off sinks (and on rows that reference
    one); returns the kept effects and the sinks skipped."""
    if not disabled:
        return effects, ()
    kept: list[rules.Effect] = []
    skipped: set[str] = set()
    for effect in effects:
        requires = effect.requires if isinstance(effect, rules.RowInsert) else None
        if effect.table in disabled or (requires is not None and requires in disabled):
            skipped.add(effect.table)
        else:
            kept.append(effect)
    return kept, tuple(sorted(skipped))


def apply_batch(
    connection: sa.Connection,
    events: Sequence[ClaimedEvent],
    *,
    disabled_sinks: Collection[str],
    now: dt.datetime,
) -> BatchOutcome:
    """Applies ``events`` (ordered by session and sequence) on ``connection``,
    inside its open transaction; the caller commits."""
    outcome = BatchOutcome()
    known = legacy_store.select_applied_event_ids(
        connection, [e.event_id for e in events]
    )
    blocked: set[str] = set()
    planned: list[PlannedEvent] = []
    for event in events:
        if event.session_id in blocked:
            outcome.waiting.append(event)
        elif event.event_id in known:
            outcome.applied.append(event)
            outcome.redelivered += 1
        else:
            try:
                decoded = rules.decode(event.payload, event.event_type)
                effects, skipped = filter_sinks(
                    rules.effects_of(decoded, now), disabled_sinks
                )
            except Exception as error:
                outcome.failed.append((event, describe_error(error)))
                blocked.add(event.session_id)
                continue
            planned.append(PlannedEvent(event, effects, skipped))
            outcome.sinks[event.id] = ({e.table for e in effects}, skipped)

    # Everything planned comes before any failure of its session (the loop
    # above runs in session and sequence order), so all of it may go.
    ready = planned
    if not ready:
        return outcome

    try:
        with connection.begin_nested():
            _apply(connection, ready, now)
    except Exception as error:
        if must_abandon_batch(error):
            raise
        log.debug(
            "batch failed as a whole; applying event by event",
            extra={"event": "outbox_batch_fallback", "error": describe_error(error)},
        )
    else:
        outcome.applied.extend(p.claimed for p in ready)
        return outcome

    failed_sessions: set[str] = set()
    for item in ready:
        session_id = item.claimed.session_id
        if session_id in failed_sessions:
            outcome.waiting.append(item.claimed)
            continue
        try:
            with connection.begin_nested():
                _apply(connection, [item], now)
        except Exception as error:
            if must_abandon_batch(error):
                raise
            outcome.failed.append((item.claimed, describe_error(error)))
            failed_sessions.add(session_id)
        else:
            outcome.applied.append(item.claimed)
    return outcome


def _apply(
    connection: sa.Connection, items: Sequence[PlannedEvent], now: dt.datetime
) -> None:
    # The ledger first: the counters execute_effects upserts last are rows
    # that every batch shares, so their locks should be the last taken.
    legacy_store.insert_applied_events(
        connection, [item.ledger_row(now) for item in items]
    )
    legacy_store.execute_effects(
        connection, [effect for item in items for effect in item.effects]
    )
