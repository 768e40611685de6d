"""Reads: one session with everything under it, session lists, coverage.

ListSessions pages by keyset on (start_time, id), newest first. The page
token is opaque to clients: base64 of the last row's key and a hash of the
filters, so that a token cannot be replayed with other filters.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.errors import FieldViolation, InvalidArgument, NotFound
from server.store.convert import (
    SESSION_STATUS_WORDS,
    coverage_message,
    llm_call_message,
    log_message,
    session_message,
    step_message,
    to_datetime,
    transparency_message,
)

S = schema.sessions
T = schema.transparency
DEFAULT_PAGE_SIZE = 50


def select_session(connection: sa.Connection, tenant_id: str, session_id: str) -> Any:
    statement = (
        sa.select(S, *[c.label(f"t_{c.name}") for c in T.c])
        .select_from(S.outerjoin(T, T.c.session_id == S.c.session_id))
        .where(S.c.session_id == session_id, S.c.tenant_id == tenant_id)
    )
    row = connection.execute(statement).mappings().one_or_none()
    if row is None:
        raise NotFound(f"session {session_id!r} not found")
    return row


def _with_transparency(row: Any) -> res.Session:
    session = session_message(row)
    if row["t_session_id"] is not None:
        session.transparency.CopyFrom(
            transparency_message({c.name: row[f"t_{c.name}"] for c in T.c})
        )
    return session


def select_coverage_counts(
    connection: sa.Connection, session_id: str
) -> tuple[int, int]:
    """(pending, parked) events of the session."""
    events = schema.outbox
    statement = (
        sa.select(events.c.status, sa.func.count())
        .where(
            events.c.session_id == session_id,
            events.c.status.in_(("pending", "dead")),
        )
        .group_by(events.c.status)
    )
    counts = {status: int(n) for status, n in connection.execute(statement)}
    return counts.get("pending", 0), counts.get("dead", 0)


def get_coverage(
    connection: sa.Connection, tenant_id: str, session_id: str
) -> res.Coverage:
    statement = sa.select(S.c.event_sequence).where(
        S.c.session_id == session_id, S.c.tenant_id == tenant_id
    )
    total = connection.execute(statement).scalar_one_or_none()
    if total is None:
        raise NotFound(f"session {session_id!r} not found")
    pending, parked = select_coverage_counts(connection, session_id)
    return coverage_message(int(total), pending, parked)


def _sort_key(step: res.Step) -> tuple[int, float, str]:
    started = step.start_time.seconds + step.start_time.nanos / 1e9
    return (
        step.step_order,
        started if step.HasField("start_time") else float("inf"),
        step.step_id,
    )


def get_session(
    connection: sa.Connection, tenant_id: str, session_id: str
) -> res.Session:
    """The session with its step tree, logs, LLM calls and coverage."""
    row = select_session(connection, tenant_id, session_id)
    session = _with_transparency(row)

    steps = {
        r["step_id"]: step_message(r)
        for r in connection.execute(
            sa.select(schema.steps)
            .where(schema.steps.c.session_id == session_id)
            .order_by(schema.steps.c.id)
        ).mappings()
    }
    log_rows = connection.execute(
        sa.select(schema.logs)
        .where(schema.logs.c.session_id == session_id)
        .order_by(schema.logs.c.id)
    ).mappings()
    for log_row in log_rows:
        entry = log_message(log_row)
        owner = steps.get(entry.step_id)
        (owner.logs if owner is not None else session.logs).append(entry)
    session.steps.extend(_step_tree(steps))

    calls = connection.execute(
        sa.select(schema.llm_calls)
        .where(schema.llm_calls.c.session_id == session_id)
        .order_by(schema.llm_calls.c.id)
    ).mappings()
    session.llm_calls.extend(llm_call_message(c) for c in calls)
    pending, parked = select_coverage_counts(connection, session_id)
    session.coverage.CopyFrom(
        coverage_message(int(row["event_sequence"]), pending, parked)
    )
    return session


def _step_tree(steps: dict[str, res.Step]) -> list[res.Step]:
    """Nests steps under their parents. A step whose parent chain does not
    reach a top-level step (a cycle made by later updates) is shown at the top."""
    children: dict[str, list[res.Step]] = {}
    roots: list[res.Step] = []
    for step in steps.values():
        if step.parent_step_id and step.parent_step_id in steps:
            children.setdefault(step.parent_step_id, []).append(step)
        else:
            roots.append(step)

    placed: set[str] = set()

    def build(step: res.Step) -> res.Step:
        placed.add(step.step_id)
        for child in sorted(children.get(step.step_id, []), key=_sort_key):
            if child.step_id not in placed:
                step.children.append(build(child))
        return step

    tree = [build(step) for step in sorted(roots, key=_sort_key)]
    for step in sorted(steps.values(), key=_sort_key):
        if step.step_id not in placed:
            tree.append(build(step))
    return tree


def _filters_hash(tenant_id: str, request: pb.ListSessionsRequest) -> str:
    filters = pb.ListSessionsRequest()
    filters.CopyFrom(request)
    filters.ClearField("page_size")
    filters.ClearField("page_token")
    digest = hashlib.sha256(tenant_id.encode() + b"\0")
    digest.update(filters.SerializeToString(deterministic=True))
    return digest.hexdigest()[:24]


def encode_page_token(start_time: dt.datetime, row_id: int, filters: str) -> str:
    raw = json.dumps({"s": start_time.isoformat(), "i": row_id, "f": filters})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filters: str) -> tuple[dt.datetime, int]:
    def invalid(reason: str) -> InvalidArgument:
        return InvalidArgument([FieldViolation("page_token", reason)])

    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        start_time = dt.datetime.fromisoformat(data["s"])
        row_id = int(data["i"])
        issued_for = str(data["f"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid("not a page token this server issued") from None
    if issued_for != filters:
        raise invalid("the filters differ from the ones the token was issued for")
    return start_time, row_id


def list_sessions(
    connection: sa.Connection, tenant_id: str, request: pb.ListSessionsRequest
) -> pb.ListSessionsResponse:
    filters = _filters_hash(tenant_id, request)
    page_size = request.page_size or DEFAULT_PAGE_SIZE
    conditions: list[Any] = [S.c.tenant_id == tenant_id]
    if request.user_id:
        conditions.append(S.c.user_id == request.user_id)
    if request.status:
        conditions.append(S.c.status == SESSION_STATUS_WORDS[request.status])
    if request.query_type:
        conditions.append(S.c.query_type == request.query_type)
    if request.conversation_id:
        conditions.append(S.c.conversation_id == request.conversation_id)
    if request.HasField("start_time_from"):
        conditions.append(S.c.start_time >= to_datetime(request.start_time_from))
    if request.HasField("start_time_to"):
        conditions.append(S.c.start_time < to_datetime(request.start_time_to))
    if request.page_token:
        after_time, after_id = decode_page_token(request.page_token, filters)
        conditions.append(
            sa.or_(
                S.c.start_time < after_time,
                sa.and_(S.c.start_time == after_time, S.c.id < after_id),
            )
        )
    statement = (
        sa.select(S, *[c.label(f"t_{c.name}") for c in T.c])
        .select_from(S.outerjoin(T, T.c.session_id == S.c.session_id))
        .where(*conditions)
        .order_by(S.c.start_time.desc(), S.c.id.desc())
        .limit(page_size + 1)
    )
    rows = list(connection.execute(statement).mappings())
    response = pb.ListSessionsResponse(
        sessions=[_with_transparency(r) for r in rows[:page_size]]
    )
    if len(rows) > page_size:
        last = rows[page_size - 1]
        response.next_page_token = encode_page_token(
            last["start_time"], int(last["id"]), filters
        )
    return response
