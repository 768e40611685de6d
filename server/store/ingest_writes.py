"""An Ingest's rows: the final state of its batch, each table written once.

A session or step the batch creates is inserted as the batch leaves it, one
it changes is updated to that state; logs and LLM calls are inserted in
operation order (so their ids increase as the single calls would have made
them), roll-ups are written as summed.

On PostgreSQL new rows go in with COPY, at once and parents first; the
UPDATEs are deferred to the COMMIT's pipeline. On SQLite every statement is
deferred, except when an AppendLogs operation has its own request_id: its
answer needs the ids of its log lines, so the sessions, steps and logs are
written (and the logs inserted with RETURNING) before the answers are
recorded.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from server import schema
from server.store.ingest_ops import Writes
from server.store.ingest_state import BatchState
from server.store.logs import insert_logs_returning_ids
from server.store.sessions import SESSION_ID
from server.store.steps import (
    insert_step_statement,
    update_step_parameters,
    update_step_statement,
)
from server.store.transaction import NOTIFY_CHANNEL, WriteContext, copy_rows

S = schema.sessions
T = schema.transparency


@functools.cache
def _statements() -> dict[str, Any]:
    return {
        "insert_sessions": S.insert().inline(),
        "insert_steps": insert_step_statement(),
        "update_session": S.update().where(S.c.session_id == SESSION_ID),
        "insert_logs": schema.logs.insert().inline(),
        "insert_calls": schema.llm_calls.insert().inline(),
        "insert_roll_ups": T.insert().inline(),
        "update_roll_up": T.update().where(T.c.session_id == SESSION_ID),
        "notify": sa.text(
            "SELECT pg_notify(:channel, session_id) "
            "FROM unnest(CAST(:session_ids AS varchar[])) AS session_id"
        ),
    }


def write_batch(
    context: WriteContext, state: BatchState, writes: Writes, *, log_ids: bool
) -> list[int]:
    """Writes (or defers) the batch's rows; returns the ids of the log lines
    when ``log_ids`` is set."""
    statements = _statements()
    copy = context.postgresql

    def insert(table: sa.Table, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if copy:
            copy_rows(context, table, rows)
        elif log_ids:
            context.connection.execute(statements[name], rows)
        else:
            context.defer(statements[name], rows)

    new_sessions = [s.row for s in state.sessions.values() if not s.stored]
    for session in new_sessions:
        session["event_sequence"] = state.sessions[session["session_id"]].sequence
    insert(S, "insert_sessions", new_sessions)
    created, updated = _step_rows(state)
    insert(schema.steps, "insert_steps", created)
    ids: list[int] = []
    if log_ids:
        ids = insert_logs_returning_ids(context, writes.logs)
    else:
        insert(schema.logs, "insert_logs", writes.logs)
    insert(schema.llm_calls, "insert_calls", writes.calls)
    new_roll_ups, changed_roll_ups = _roll_up_rows(state)
    insert(T, "insert_roll_ups", new_roll_ups)

    for group in _session_updates(state):
        context.defer(statements["update_session"], group)
    if updated:
        context.defer(update_step_statement(), updated)
    if changed_roll_ups:
        context.defer(statements["update_roll_up"], changed_roll_ups)
    if context.postgresql and context.touched:
        context.defer(
            statements["notify"],
            {"channel": NOTIFY_CHANNEL, "session_ids": sorted(context.touched)},
        )
    return ids


def _session_updates(state: BatchState) -> list[list[dict[str, Any]]]:
    """Parameters of the stored sessions' UPDATEs, grouped by the columns set
    (one executemany per group)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for session in state.sessions.values():
        if not session.stored or (
            session.sequence == session.stored_sequence and not session.changed
        ):
            continue
        values = {name: session.row[name] for name in sorted(session.changed)}
        values["event_sequence"] = session.sequence
        values["b_session_id"] = session.session_id
        groups[tuple(values)].append(values)
    return list(groups.values())


def _step_rows(
    state: BatchState,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the steps the batch created (in creation order) and parameters
    of the UPDATEs of the stored steps it changed."""
    created: list[tuple[tuple[int, int], dict[str, Any]]] = []
    updated: list[dict[str, Any]] = []
    for session in state.sessions.values():
        for step in session.steps.values():
            if not step.changed:
                continue
            assert step.row is not None
            if step.row_id is None:
                created.append((step.order, step.row))
            else:
                updated.append(update_step_parameters(step.row, step.row_id))
    created.sort(key=lambda item: item[0])
    return [row for _, row in created], updated


def _roll_up_rows(
    state: BatchState,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New roll-ups, and parameters of the UPDATEs of the stored ones."""
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for session in state.sessions.values():
        roll_up = session.transparency
        if roll_up is None or not session.transparency_changed:
            continue
        if session.transparency_stored:
            values = {k: v for k, v in roll_up.items() if k != "session_id"}
            updates.append({**values, "b_session_id": session.session_id})
        else:
            inserts.append(roll_up)
    return inserts, updates
