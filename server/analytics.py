"""The analytics calls: usage, outcomes and step performance, aggregated in SQL.

Every query filters on the caller's tenant and on half-open time ranges
(``start <= t < end``), and returns already-grouped rows, so the work and the
memory stay in the database whatever the volume. Step performance is the
query behind the ``process_flow_step_performance`` view with the tenant and
time filters the view cannot take.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from processflow.v1 import processflow_service_pb2 as pb
from server import schema
from server.errors import FieldViolation, InvalidArgument
from server.store.transaction import translate_errors
from server.validation import MAX_SECONDS, MIN_SECONDS

FINISHED = ("completed", "error", "cancelled")


class HasEngine(Protocol):
    @property
    def engine(self) -> sa.Engine: ...


def _check_range(
    request: Any, violations: list[FieldViolation]
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The request's start_time and end_time as naive UTC, checked."""
    bounds: list[dt.datetime | None] = []
    for name in ("start_time", "end_time"):
        if not request.HasField(name):
            bounds.append(None)
            continue
        value: timestamp_pb2.Timestamp = getattr(request, name)
        if not MIN_SECONDS <= value.seconds <= MAX_SECONDS or not (
            0 <= value.nanos <= 999_999_999
        ):
            violations.append(
                FieldViolation(name, "not a valid time between years 1 and 9999")
            )
            bounds.append(None)
            continue
        bounds.append(value.ToDatetime())
    start, end = bounds
    if start is not None and end is not None and end < start:
        violations.append(FieldViolation("end_time", "must not be before start_time"))
    return start, end


def _check_length(
    violations: list[FieldViolation], field: str, value: str, most: int
) -> None:
    if len(value) > most:
        violations.append(
            FieldViolation(field, f"at most {most} characters, got {len(value)}")
        )


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def _day_of(connection: sa.Connection, column: Any) -> Any:
    """The UTC day of a naive UTC timestamp column as ``YYYY-MM-DD`` text."""
    if connection.dialect.name == "postgresql":
        return sa.func.to_char(column, "YYYY-MM-DD")
    if connection.dialect.name in ("mysql", "mariadb"):
        return sa.func.date_format(column, "%Y-%m-%d")
    return sa.func.strftime("%Y-%m-%d", column)


def _tenant_is(column: Any, tenant_id: str | None) -> list[Any]:
    """The tenant condition; none when an admin asked about every tenant."""
    return [] if tenant_id is None else [column == tenant_id]


def _float(value: Any) -> float:
    return 0.0 if value is None else float(value)


# GetUsageSummary

_GROUP_COLUMNS = {
    pb.USAGE_GROUPING_USER: schema.llm_calls.c.user_id,
    pb.USAGE_GROUPING_MODEL: sa.func.coalesce(schema.llm_calls.c.model, ""),
    pb.USAGE_GROUPING_QUERY_TYPE: schema.llm_calls.c.query_type,
}


def validate_usage_summary(request: pb.GetUsageSummaryRequest) -> None:
    violations: list[FieldViolation] = []
    if request.group_by not in pb.UsageGrouping.DESCRIPTOR.values_by_number:
        violations.append(
            FieldViolation(
                "group_by", f"unknown UsageGrouping value {request.group_by}"
            )
        )
    _check_length(violations, "user_id", request.user_id, 256)
    _check_range(request, violations)
    _raise_if(violations)


def select_usage_by_group(
    connection: sa.Connection, tenant_id: str | None, request: pb.GetUsageSummaryRequest
) -> list[sa.Row[Any]]:
    calls = schema.llm_calls.c
    grouping = request.group_by or pb.USAGE_GROUPING_DAY
    key = _GROUP_COLUMNS.get(grouping)
    if key is None:
        key = _day_of(connection, calls.call_time)
    key = key.label("key")
    query = (
        sa.select(
            key,
            sa.func.count().label("requests"),
            sa.func.sum(calls.input_tokens).label("input_tokens"),
            sa.func.sum(calls.output_tokens).label("output_tokens"),
            sa.func.sum(calls.total_tokens).label("total_tokens"),
            sa.func.sum(calls.cost).label("cost"),
        )
        .where(*_tenant_is(calls.tenant_id, tenant_id))
        .group_by(key)
        .order_by(key)
    )
    if request.user_id:
        query = query.where(calls.user_id == request.user_id)
    if request.HasField("start_time"):
        query = query.where(calls.call_time >= request.start_time.ToDatetime())
    if request.HasField("end_time"):
        query = query.where(calls.call_time < request.end_time.ToDatetime())
    return list(connection.execute(query))


def _usage_row(
    key: str, requests: int, tokens: tuple[int, int, int], cost: float
) -> pb.UsageRow:
    return pb.UsageRow(
        key=key,
        requests=requests,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        total_tokens=tokens[2],
        cost_usd=cost,
        average_tokens_per_request=tokens[2] / requests if requests else 0.0,
        average_cost_per_request=cost / requests if requests else 0.0,
    )


def get_usage_summary(
    store: HasEngine, tenant_id: str | None, request: pb.GetUsageSummaryRequest
) -> pb.GetUsageSummaryResponse:
    validate_usage_summary(request)
    with translate_errors(), store.engine.connect() as connection:
        groups = select_usage_by_group(connection, tenant_id, request)

    response = pb.GetUsageSummaryResponse()
    totals = [0, 0, 0, 0]
    cost_total = 0.0
    for group in groups:
        tokens = (
            int(group.input_tokens or 0),
            int(group.output_tokens or 0),
            int(group.total_tokens or 0),
        )
        cost = _float(group.cost)
        response.rows.append(
            _usage_row(str(group.key), int(group.requests), tokens, cost)
        )
        totals = [
            totals[0] + int(group.requests),
            totals[1] + tokens[0],
            totals[2] + tokens[1],
            totals[3] + tokens[2],
        ]
        cost_total += cost
    response.total.CopyFrom(
        _usage_row("", totals[0], (totals[1], totals[2], totals[3]), cost_total)
    )
    return response


# GetSuccessSummary


def validate_success_summary(request: pb.GetSuccessSummaryRequest) -> None:
    violations: list[FieldViolation] = []
    _check_length(violations, "user_id", request.user_id, 256)
    _check_length(violations, "query_type", request.query_type, 100)
    _check_range(request, violations)
    _raise_if(violations)


def select_session_outcomes(
    connection: sa.Connection,
    tenant_id: str | None,
    request: pb.GetSuccessSummaryRequest,
) -> sa.Row[Any]:
    sessions = schema.sessions.c
    finished = sessions.status.in_(FINISHED)

    def count_status(status: str) -> Any:
        return sa.func.sum(sa.case((sessions.status == status, 1), else_=0))

    query = sa.select(
        sa.func.count().label("total"),
        count_status("completed").label("completed"),
        count_status("error").label("error"),
        count_status("cancelled").label("cancelled"),
        count_status("running").label("running"),
        sa.func.avg(sa.case((finished, sessions.overall_confidence))).label(
            "average_confidence"
        ),
        sa.func.avg(sa.case((finished, sessions.total_duration_ms))).label(
            "average_duration_ms"
        ),
    ).where(*_tenant_is(sessions.tenant_id, tenant_id))
    if request.user_id:
        query = query.where(sessions.user_id == request.user_id)
    if request.query_type:
        query = query.where(sessions.query_type == request.query_type)
    if request.HasField("start_time"):
        query = query.where(sessions.start_time >= request.start_time.ToDatetime())
    if request.HasField("end_time"):
        query = query.where(sessions.start_time < request.end_time.ToDatetime())
    return connection.execute(query).one()


def get_success_summary(
    store: HasEngine, tenant_id: str | None, request: pb.GetSuccessSummaryRequest
) -> pb.GetSuccessSummaryResponse:
    validate_success_summary(request)
    with translate_errors(), store.engine.connect() as connection:
        row = select_session_outcomes(connection, tenant_id, request)

    completed, error, cancelled = (
        int(row.completed or 0),
        int(row.error or 0),
        int(row.cancelled or 0),
    )
    finished = completed + error + cancelled
    response = pb.GetSuccessSummaryResponse(
        total_sessions=int(row.total or 0),
        completed_sessions=completed,
        error_sessions=error,
        cancelled_sessions=cancelled,
        running_sessions=int(row.running or 0),
        success_rate=completed / finished if finished else 0.0,
        error_rate=error / finished if finished else 0.0,
    )
    if row.average_confidence is not None:
        response.average_confidence = float(row.average_confidence)
    if row.average_duration_ms is not None:
        response.average_duration_ms = float(row.average_duration_ms)
    return response


# GetStepPerformance


def validate_step_performance(request: pb.GetStepPerformanceRequest) -> None:
    violations: list[FieldViolation] = []
    _check_length(violations, "step_type", request.step_type, 64)
    _check_range(request, violations)
    _raise_if(violations)


def select_step_performance(
    connection: sa.Connection,
    tenant_id: str | None,
    request: pb.GetStepPerformanceRequest,
) -> list[sa.Row[Any]]:
    steps = schema.steps.c
    succeeded = sa.func.sum(sa.case((steps.status == "completed", 1), else_=0))
    query = (
        sa.select(
            steps.step_type,
            sa.func.count().label("executions"),
            sa.func.avg(steps.duration_ms).label("average_duration_ms"),
            sa.func.min(steps.duration_ms).label("min_duration_ms"),
            sa.func.max(steps.duration_ms).label("max_duration_ms"),
            sa.func.avg(steps.confidence).label("average_confidence"),
            succeeded.label("success_count"),
            sa.func.sum(sa.case((steps.status == "error", 1), else_=0)).label(
                "error_count"
            ),
        )
        .select_from(
            schema.steps.join(
                schema.sessions, schema.sessions.c.session_id == steps.session_id
            )
        )
        .where(
            *_tenant_is(schema.sessions.c.tenant_id, tenant_id),
            steps.start_time.is_not(None),
            steps.end_time.is_not(None),
        )
        .group_by(steps.step_type)
        .order_by(steps.step_type)
    )
    if request.step_type:
        query = query.where(steps.step_type == request.step_type)
    if request.HasField("start_time"):
        query = query.where(steps.start_time >= request.start_time.ToDatetime())
    if request.HasField("end_time"):
        query = query.where(steps.start_time < request.end_time.ToDatetime())
    return list(connection.execute(query))


def get_step_performance(
    store: HasEngine, tenant_id: str | None, request: pb.GetStepPerformanceRequest
) -> pb.GetStepPerformanceResponse:
    validate_step_performance(request)
    with translate_errors(), store.engine.connect() as connection:
        groups = select_step_performance(connection, tenant_id, request)

    response = pb.GetStepPerformanceResponse()
    for group in groups:
        executions = int(group.executions)
        successes = int(group.success_count or 0)
        row = pb.StepPerformanceRow(
            step_type=group.step_type,
            executions=executions,
            average_duration_ms=_float(group.average_duration_ms),
            min_duration_ms=int(group.min_duration_ms or 0),
            max_duration_ms=int(group.max_duration_ms or 0),
            success_count=successes,
            error_count=int(group.error_count or 0),
            success_rate_percent=100.0 * successes / executions if executions else 0.0,
        )
        if group.average_confidence is not None:
            row.average_confidence = float(group.average_confidence)
        response.rows.append(row)
    return response
