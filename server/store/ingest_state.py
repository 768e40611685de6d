"""What an Ingest reads before it applies its operations, held in memory.

An Ingest locks every existing session it names with one SELECT ... FOR NO
KEY UPDATE ordered by session_id (so that two batches sharing sessions lock
them in the same order and cannot deadlock; the lock mode is the one the
single calls' UPDATE takes). Only then, in fresh statements that see every
write committed before the locks were granted, it reads what the operations
need: the steps of the locked sessions, the full rows of the steps it
updates, their roll-ups, the LLM calls and the request records it names.
Each read is one statement for the whole batch, and is skipped when no
operation needs it. Sessions the batch starts are not locked (they do not
exist yet); a concurrent writer that creates one first makes the batch's
INSERT fail on its key, and the store runs the batch again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from server import schema
from server.errors import NotFound
from server.store.idempotency import select_request_records
from server.store.steps import LOADED_STEP_COLUMNS
from server.store.transaction import WriteContext

S = schema.sessions
STEPS = schema.steps
T = schema.transparency
C = schema.llm_calls


@dataclass
class StepState:
    step_id: str
    step_type: str
    finished: bool
    # Sorts like the steps' ids: stored steps first, then new ones in order.
    order: tuple[int, int]
    # Every column once known: created by the batch or loaded to be updated.
    row: dict[str, Any] | None = None
    row_id: int | None = None
    changed: bool = False


@dataclass
class SessionState:
    session_id: str
    row: dict[str, Any]
    stored: bool
    sequence: int
    steps: dict[str, StepState] = field(default_factory=dict)
    transparency: dict[str, Any] | None = None
    transparency_stored: bool = False
    transparency_changed: bool = False
    # Columns of a stored session the batch changed (besides event_sequence).
    changed: set[str] = field(default_factory=set)
    stored_sequence: int = 0

    def step_ids_by_type(self, step_type: str) -> list[str]:
        found = [s for s in self.steps.values() if s.step_type == step_type]
        return [s.step_id for s in sorted(found, key=lambda s: s.order)]


@dataclass
class Needs:
    """What the operations of a batch will ask of the database."""

    session_ids: set[str] = field(default_factory=set)
    steps_of: set[str] = field(default_factory=set)
    step_rows: set[tuple[str, str]] = field(default_factory=set)
    roll_ups_of: set[str] = field(default_factory=set)
    call_ids: set[str] = field(default_factory=set)
    request_ids: set[str] = field(default_factory=set)


@dataclass
class BatchState:
    tenant_id: str
    sessions: dict[str, SessionState] = field(default_factory=dict)
    # Session ids that exist for another tenant.
    foreign: set[str] = field(default_factory=set)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    new_steps: itertools.count[int] = field(default_factory=itertools.count)

    def session(self, session_id: str) -> SessionState:
        """The session as the operations so far left it; NotFound when it does
        not exist for this tenant."""
        state = self.sessions.get(session_id)
        if state is None:
            raise NotFound(f"session {session_id!r} not found")
        return state


def lock_sessions(context: WriteContext, session_ids: Iterable[str]) -> list[Any]:
    wanted = sorted(set(session_ids))
    if not wanted:
        return []
    statement = (
        sa.select(S)
        .where(S.c.session_id.in_(wanted))
        .order_by(S.c.session_id)
        .with_for_update(key_share=True)
    )
    return list(context.connection.execute(statement).mappings())


def select_step_index(context: WriteContext, session_ids: set[str]) -> list[Any]:
    statement = (
        sa.select(
            STEPS.c.id,
            STEPS.c.session_id,
            STEPS.c.step_id,
            STEPS.c.step_type,
            STEPS.c.finished_event_written,
        )
        .where(STEPS.c.session_id.in_(sorted(session_ids)))
        .order_by(STEPS.c.id)
    )
    return list(context.connection.execute(statement))


def select_steps_by_id(context: WriteContext, row_ids: list[int]) -> list[Any]:
    statement = sa.select(*LOADED_STEP_COLUMNS).where(STEPS.c.id.in_(sorted(row_ids)))
    return list(context.connection.execute(statement).mappings())


def select_roll_ups(context: WriteContext, session_ids: set[str]) -> list[Any]:
    statement = sa.select(T).where(T.c.session_id.in_(sorted(session_ids)))
    return list(context.connection.execute(statement).mappings())


def select_calls(context: WriteContext, call_ids: set[str]) -> list[Any]:
    statement = sa.select(C).where(C.c.call_id.in_(sorted(call_ids)))
    return list(context.connection.execute(statement).mappings())


def load_state(context: WriteContext, needs: Needs) -> BatchState:
    state = BatchState(context.tenant_id)
    for row in lock_sessions(context, needs.session_ids):
        if row["tenant_id"] != context.tenant_id:
            state.foreign.add(row["session_id"])
            continue
        sequence = int(row["event_sequence"])
        state.sessions[row["session_id"]] = SessionState(
            row["session_id"],
            dict(row),
            stored=True,
            sequence=sequence,
            stored_sequence=sequence,
        )

    with_steps = needs.steps_of & state.sessions.keys()
    if with_steps:
        _load_steps(context, state, with_steps, needs.step_rows)
    with_roll_ups = needs.roll_ups_of & state.sessions.keys()
    if with_roll_ups:
        for row in select_roll_ups(context, with_roll_ups):
            session = state.sessions[row["session_id"]]
            session.transparency = dict(row)
            session.transparency_stored = True
    if needs.call_ids:
        state.calls = {
            row["call_id"]: dict(row) for row in select_calls(context, needs.call_ids)
        }
    if needs.request_ids:
        state.records = select_request_records(
            context.connection, context.tenant_id, needs.request_ids
        )
    return state


def _load_steps(
    context: WriteContext,
    state: BatchState,
    session_ids: set[str],
    step_rows: set[tuple[str, str]],
) -> None:
    to_load: list[int] = []
    for row in select_step_index(context, session_ids):
        session = state.sessions[row.session_id]
        session.steps[row.step_id] = StepState(
            row.step_id,
            row.step_type,
            bool(row.finished_event_written),
            (0, int(row.id)),
            row_id=int(row.id),
        )
        if (row.session_id, row.step_id) in step_rows:
            to_load.append(int(row.id))
    if to_load:
        for row in select_steps_by_id(context, to_load):
            step = state.sessions[row["session_id"]].steps[row["step_id"]]
            step.row = {k: v for k, v in row.items() if k != "id"}
