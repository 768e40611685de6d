"""RecordStep: create or update one step, its first-terminal event, its logs.

Fields set in the request override the stored ones; unset or empty fields
keep them. A new step takes its name, order and parent from the catalog when
the client omits them. The step_finished event is written once, the first
time the step reaches a terminal status (steps.finished_event_written); the
step row keeps that event's sequence and serialized payload
(finished_sequence, finished_event), written once and never read back here.

Round trips: two on PostgreSQL. The session lock (which already counts the
event when the request's status is terminal) and, after it, one SELECT of
the step count and the steps the request names; then the step write, its
logs, the request record and the event go out with the COMMIT.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as postgresql_types

from processflow.catalog import CATALOG
from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema
from server.errors import FieldViolation, InvalidArgument, ResourceExhausted
from server.store import outbox
from server.store.convert import (
    STEP_STATUS_VALUES,
    STEP_STATUS_WORDS,
    TERMINAL_STEP_WORDS,
    confidence_decimal,
    duration_ms,
    json_object_text,
    step_message,
    struct_to_dict,
    to_datetime,
    to_timestamp,
)
from server.store.logs import defer_insert_logs, log_rows
from server.store.sessions import (
    SESSION_ID,
    defer_bump_event_sequence,
    lock_session,
)
from server.store.transaction import WriteContext

STEPS = schema.steps
S = schema.sessions


TERMINAL_STEP_STATUSES = frozenset(
    STEP_STATUS_VALUES[word] for word in TERMINAL_STEP_WORDS
)

# The first terminal state's event, kept for verify and backfill: writes set
# it once and never read it, so the step reads leave it out.
FINISHED_EVENT_COLUMNS = ("finished_sequence", "finished_event")
LOADED_STEP_COLUMNS = tuple(
    column for column in STEPS.c if column.name not in FINISHED_EVENT_COLUMNS
)
LOADED_STEP_COLUMN_NAMES = tuple(column.name for column in LOADED_STEP_COLUMNS)


@functools.cache
def _step_rows_statement(postgresql: bool) -> Any:
    # The count comes from a one-row subquery joined to the matching steps,
    # so that the statement answers even when no step matches. PostgreSQL
    # takes the ids as one array, so the text is the same for any number of
    # them (and the statement runs on the driver, see driver.py).
    if postgresql:
        named = STEPS.c.step_id == sa.any_(
            sa.bindparam("b_step_ids", type_=postgresql_types.ARRAY(sa.String()))
        )
    else:
        named = STEPS.c.step_id.in_(sa.bindparam("b_step_ids", expanding=True))
    counted = (
        sa.select(sa.func.count().label("step_count"))
        .select_from(STEPS)
        .where(STEPS.c.session_id == SESSION_ID)
        .subquery("counted")
    )
    matching = sa.and_(
        STEPS.c.session_id == SESSION_ID,
        sa.or_(
            named,
            STEPS.c.step_type == sa.bindparam("b_parent_code", type_=sa.String()),
        ),
    )
    return (
        sa.select(counted.c.step_count, *LOADED_STEP_COLUMNS)
        .select_from(counted.outerjoin(STEPS, matching))
        .order_by(STEPS.c.id)
    )


def step_rows_query(
    context: WriteContext, session_id: str, step_ids: set[str], parent_code: str | None
) -> tuple[Any, dict[str, Any]]:
    """The read of the session's step count, and of the steps named in
    ``step_ids`` and, for a catalog parent, the steps of that code, oldest
    first (without the finished_* columns); its rows go to step_rows."""
    return _step_rows_statement(context.postgresql), {
        "b_session_id": session_id,
        "b_step_ids": sorted(step_ids),
        "b_parent_code": parent_code,
    }


def step_rows(result: list[Any]) -> tuple[int, list[dict[str, Any]]]:
    """The step count and the steps as dicts, from step_rows_query's rows."""
    count = 0
    rows: list[dict[str, Any]] = []
    for row in result:
        count = int(row.step_count)
        if row.id is not None:
            rows.append({name: getattr(row, name) for name in LOADED_STEP_COLUMN_NAMES})
    return count, rows


def select_step_type(context: WriteContext, session_id: str, step_id: str) -> str:
    statement = sa.select(STEPS.c.step_type).where(
        STEPS.c.session_id == session_id, STEPS.c.step_id == step_id
    )
    return str(context.connection.execute(statement).scalar_one_or_none() or "")


def _time(request: Any, name: str) -> dt.datetime | None:
    return to_datetime(getattr(request, name)) if request.HasField(name) else None


def created_values(
    context: WriteContext, request: pb.RecordStepRequest, parent_step_id: str | None
) -> dict[str, Any]:
    entry = CATALOG.get(request.step_type)
    if request.HasField("step_order"):
        order = request.step_order
    else:
        order = entry.order if entry else 0
    return {
        "session_id": request.session_id,
        "step_id": request.step_id,
        "step_type": request.step_type,
        "parent_step_id": parent_step_id,
        "name": request.name or (entry.name if entry else request.step_type),
        "description": request.description or None,
        "step_order": order,
        "status": "pending",
        "start_time": None,
        "end_time": None,
        "confidence": None,
        "input_data": None,
        "output_data": None,
        "error_message": None,
        "metadata": None,
        "retry_count": 0,
        "tokens_used": 0,
        "finished_event_written": False,
        "finished_sequence": None,
        "finished_event": None,
        "created_at": context.now,
    }


def merge_request(
    context: WriteContext, request: pb.RecordStepRequest, stored: dict[str, Any]
) -> dict[str, Any]:
    """The stored step with the request's set fields applied."""
    values = dict(stored)
    for name in ("step_type", "name", "description", "parent_step_id"):
        if getattr(request, name):
            values[name] = getattr(request, name)
    for name in ("input_data", "output_data", "error_message"):
        if getattr(request, name):
            values[name] = getattr(request, name)
    for name in ("step_order", "tokens_used", "retry_count"):
        if request.HasField(name):  # type: ignore[arg-type]
            values[name] = getattr(request, name)
    if request.HasField("confidence"):
        values["confidence"] = confidence_decimal(request.confidence)
    if request.HasField("metadata"):
        values["metadata"] = struct_to_dict(request.metadata)
    if request.status != res.STEP_STATUS_UNSPECIFIED:
        values["status"] = STEP_STATUS_WORDS[request.status]

    start, end = _time(request, "start_time"), _time(request, "end_time")
    values["start_time"] = start or values["start_time"]
    values["end_time"] = end or values["end_time"]
    if values["status"] == "running" and values["start_time"] is None:
        values["start_time"] = context.now
    if values["status"] in TERMINAL_STEP_WORDS and values["end_time"] is None:
        values["end_time"] = context.now
    if (
        values["start_time"] is not None
        and values["end_time"] is not None
        and values["end_time"] < values["start_time"]
    ):
        if end is None and start is None:
            # Both times came from the server's clock or earlier calls: the
            # server's own end cannot precede a start the client set.
            values["end_time"] = values["start_time"]
        else:
            field = "end_time" if end is not None else "start_time"
            raise InvalidArgument(
                [FieldViolation(field, "the step's end_time would precede its start")]
            )
    values["duration_ms"] = duration_ms(values["start_time"], values["end_time"])
    values["updated_at"] = context.now
    return values


@functools.cache
def insert_step_statement() -> Any:
    return STEPS.insert().inline()


@functools.cache
def update_step_statement() -> Any:
    """The UPDATE of one step; bind its values with update_step_parameters.

    The finished_* columns keep a value once set (COALESCE), so that an
    update that did not read them, or a later terminal state, cannot change
    the first terminal state's event."""
    return (
        STEPS.update()
        .where(STEPS.c.id == sa.bindparam("b_row_id"))
        .values(
            {
                name: sa.func.coalesce(
                    STEPS.c[name], sa.bindparam(f"b_{name}", type_=STEPS.c[name].type)
                )
                for name in FINISHED_EVENT_COLUMNS
            }
        )
    )


def update_step_parameters(values: dict[str, Any], row_id: int) -> dict[str, Any]:
    """The parameters of update_step_statement for the step's ``values``."""
    parameters = {k: v for k, v in values.items() if k not in FINISHED_EVENT_COLUMNS}
    for name in FINISHED_EVENT_COLUMNS:
        parameters[f"b_{name}"] = values.get(name)
    parameters["b_row_id"] = row_id
    return parameters


def record_step(
    context: WriteContext, request: pb.RecordStepRequest
) -> pb.RecordStepResponse:
    # Counted now because nearly every terminal status is the step's first;
    # an update of an already finished step undoes it.
    bump = 1 if request.status in TERMINAL_STEP_STATUSES else 0
    entry = CATALOG.get(request.step_type) if request.step_type else None
    parent_code = entry.parent if entry and not request.parent_step_id else None
    wanted = {request.step_id, request.parent_step_id} | {
        log.step_id for log in request.logs
    }
    wanted.discard("")
    locked = lock_session(
        context,
        request.session_id,
        bump=bump,
        then=step_rows_query(context, request.session_id, wanted, parent_code),
    )
    step_count, rows = step_rows(locked.then_rows)
    by_id = {row["step_id"]: row for row in rows}
    existing = by_id.get(request.step_id)
    if request.parent_step_id and request.parent_step_id not in by_id:
        raise InvalidArgument(
            [
                FieldViolation(
                    "parent_step_id",
                    f"no step {request.parent_step_id!r} in session "
                    f"{request.session_id!r}",
                )
            ]
        )

    if existing is None:
        if not request.step_type:
            raise InvalidArgument(
                [FieldViolation("step_type", "required when the step is created")]
            )
        if step_count >= context.limits.max_steps_per_session:
            raise ResourceExhausted(
                f"session {request.session_id!r} has reached its limit of "
                f"{context.limits.max_steps_per_session} steps"
            )
        parent_id = request.parent_step_id or next(
            (
                row["step_id"]
                for row in rows
                if parent_code and row["step_type"] == parent_code
            ),
            None,
        )
        values = merge_request(
            context, request, created_values(context, request, parent_id)
        )
    else:
        values = merge_request(context, request, dict(existing))
        del values["id"]
    finishing = (
        values["status"] in TERMINAL_STEP_WORDS and not values["finished_event_written"]
    )
    values["finished_event_written"] = values["finished_event_written"] or finishing
    # A stored step's finished_* columns are not loaded: None keeps them (see
    # update_step_statement).
    for name in FINISHED_EVENT_COLUMNS:
        values.setdefault(name, None)
    if bump and not finishing:
        defer_bump_event_sequence(context, request.session_id, -bump)
    if finishing:
        _finish_step(
            context, request, values, by_id, locked.row.user_id, locked.event_sequence
        )
    if existing is None:
        context.defer(insert_step_statement(), values)
    else:
        context.defer(
            update_step_statement(), update_step_parameters(values, existing["id"])
        )

    rows_to_insert = log_rows(
        context,
        request.session_id,
        request.logs,
        default_step_id=request.step_id,
        known_step_ids=frozenset(by_id) | {request.step_id},
        checked_step_ids=frozenset(wanted),
    )
    defer_insert_logs(context, rows_to_insert)
    return pb.RecordStepResponse(step=step_message(values))


def _finish_step(
    context: WriteContext,
    request: pb.RecordStepRequest,
    values: dict[str, Any],
    by_id: dict[str, Any],
    user_id: str,
    sequence: int,
) -> None:
    parent_id = values["parent_step_id"] or ""
    if not parent_id:
        parent_type = ""
    elif parent_id in by_id:
        parent_type = by_id[parent_id]["step_type"]
    else:
        parent_type = select_step_type(context, request.session_id, parent_id)
    finished = step_finished(request.step_id, values, user_id, parent_type)
    keep_finished_event(values, sequence, finished)
    outbox.add_event(context, request.session_id, sequence, "step_finished", finished)


def keep_finished_event(
    values: dict[str, Any], sequence: int, finished: events_pb2.StepFinished
) -> None:
    """Sets the step's finished_* columns to its step_finished event, which
    verify and backfill rebuild the legacy row from."""
    values["finished_sequence"] = sequence
    values["finished_event"] = finished.SerializeToString()


def step_finished(
    step_id: str, values: dict[str, Any], user_id: str, parent_type: str
) -> events_pb2.StepFinished:
    """The step_finished event's payload for the step's ``values``."""
    finished = events_pb2.StepFinished(
        user_id=user_id,
        step_id=step_id,
        step_type=values["step_type"],
        parent_step_id=values["parent_step_id"] or "",
        parent_step_type=parent_type,
        name=values["name"],
        step_order=values["step_order"],
        status=STEP_STATUS_VALUES[values["status"]],
        output_data=values["output_data"] or "",
        metadata_json=json_object_text(values["metadata"]),
        error_message=values["error_message"] or "",
        tokens_used=values["tokens_used"],
    )
    if values["start_time"] is not None:
        finished.start_time.CopyFrom(to_timestamp(values["start_time"]))
    if values["end_time"] is not None:
        finished.end_time.CopyFrom(to_timestamp(values["end_time"]))
    if values["confidence"] is not None:
        finished.confidence = float(values["confidence"])
    return finished
