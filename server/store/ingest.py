"""Ingest: many operations in one transaction, all applied or none.

The result is the one the single calls would give, made one after another in
the order sent, but without a round trip per operation:

1. lock every existing session the batch names and read, one statement per
   table, what the operations need (ingest_state);
2. walk the operations in order against that state in memory (ingest_ops),
   with the single calls' checks and errors, so that event sequences, replays
   and failures come out as they would one call at a time;
3. write each table once (ingest_writes), in the COMMIT's pipeline.

An operation's own request_id is honoured as in the single call: one seen
before answers from its record, a new one is recorded with its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from processflow.v1 import processflow_service_pb2 as pb
from server.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    ProcessFlowError,
)
from server.store import idempotency, ingest_ops
from server.store.convert import log_message
from server.store.ingest_ops import Applied, Writes
from server.store.ingest_state import BatchState, Needs, load_state
from server.store.ingest_writes import write_batch
from server.store.transaction import WriteContext, fingerprint

Apply = Callable[[WriteContext, BatchState, Writes, Any, bool], Applied]


class Operation:
    def __init__(self, method: str, response_type: type[Message], apply: Apply) -> None:
        self.method = method
        self.response_type = response_type
        self.apply = apply


OPERATIONS: dict[str, Operation] = {
    "start_session": Operation(
        "StartSession", pb.StartSessionResponse, ingest_ops.start_session
    ),
    "record_step": Operation(
        "RecordStep", pb.RecordStepResponse, ingest_ops.record_step
    ),
    "append_logs": Operation(
        "AppendLogs", pb.AppendLogsResponse, ingest_ops.append_logs
    ),
    "record_llm_call": Operation(
        "RecordLlmCall", pb.RecordLlmCallResponse, ingest_ops.record_llm_call
    ),
    "complete_session": Operation(
        "CompleteSession", pb.CompleteSessionResponse, ingest_ops.complete_session
    ),
}


def _result(kind: str, request: Any, response: Any) -> pb.IngestResult:
    """The result of an operation answered from its request record."""
    if kind == "start_session":
        return pb.IngestResult(session_id=response.session.session_id)
    if kind == "record_step":
        return pb.IngestResult(
            session_id=request.session_id,
            step_id=request.step_id,
            logs_appended=len(request.logs),
        )
    if kind == "append_logs":
        return pb.IngestResult(
            session_id=request.session_id, logs_appended=len(response.logs)
        )
    if kind == "record_llm_call":
        return pb.IngestResult(
            session_id=request.session_id, call_id=response.call.call_id
        )
    return pb.IngestResult(session_id=request.session_id)


def _needs(operations: list[tuple[str, Any]]) -> Needs:
    needs = Needs()
    for kind, inner in operations:
        if inner.request_id:
            needs.request_ids.add(inner.request_id)
        session_id = inner.session_id
        if kind == "start_session":
            if session_id:
                needs.session_ids.add(session_id)
            continue
        needs.session_ids.add(session_id)
        needs.steps_of.add(session_id)
        if kind == "record_step":
            needs.step_rows.add((session_id, inner.step_id))
        elif kind == "record_llm_call":
            needs.roll_ups_of.add(session_id)
            if inner.call_id:
                needs.call_ids.add(inner.call_id)
        elif kind == "complete_session":
            needs.roll_ups_of.add(session_id)
    return needs


def ingest(context: WriteContext, request: pb.IngestRequest) -> pb.IngestResponse:
    operations: list[tuple[str, Any]] = []
    for operation in request.operations:
        case = operation.WhichOneof("operation")
        assert case is not None  # validation refuses an empty operation
        operations.append((case, getattr(operation, case)))
    state = load_state(context, _needs(operations))
    writes = Writes(logs=[], calls=[])

    results: list[pb.IngestResult] = []
    answered: list[tuple[dict[str, Any], Applied]] = []
    for index, (kind, inner) in enumerate(operations):
        path = f"operations[{index}].{kind}"
        try:
            result, record = _apply(context, state, writes, request, kind, inner)
        except InvalidArgument as error:
            raise InvalidArgument(
                [
                    FieldViolation(f"{path}.{v.field}", v.description)
                    for v in error.violations
                ]
            ) from error
        except ProcessFlowError as error:
            raise type(error)(f"{path}: {error.message}") from error
        results.append(result.result)
        if record is not None:
            answered.append((record, result))

    log_ids = write_batch(
        context,
        state,
        writes,
        log_ids=any(applied.log_rows is not None for _, applied in answered),
    )
    _record_answers(context, writes, answered, log_ids)
    return pb.IngestResponse(results=results)


def _apply(
    context: WriteContext,
    state: BatchState,
    writes: Writes,
    request: pb.IngestRequest,
    kind: str,
    inner: Any,
) -> tuple[Applied, dict[str, Any] | None]:
    """Applies one operation; with its own request_id, also the record to
    write (its response filled in once known)."""
    spec = OPERATIONS[kind]
    request_id: str = inner.request_id
    if not request_id:
        return spec.apply(context, state, writes, inner, False), None
    if request_id == request.request_id:
        raise AlreadyExists(
            f"request_id {request_id!r} was already used for a different request"
        )
    request_fingerprint = fingerprint(spec.method, inner)
    stored = state.records.get(request_id)
    if isinstance(stored, _PendingRecord):
        if stored.fingerprint != request_fingerprint:
            raise AlreadyExists(
                f"request_id {request_id!r} was already used for a different request"
            )
        # The same request earlier in this batch: the same answer.
        return Applied(stored.applied.result), None
    if stored is not None:
        answer = idempotency.stored_answer(stored, request_id, request_fingerprint)
        response = spec.response_type.FromString(answer)
        return Applied(_result(kind, inner, response), response), None
    applied = spec.apply(context, state, writes, inner, True)
    record = {
        "request_id": request_id,
        "tenant_id": context.tenant_id,
        "method": spec.method,
        "fingerprint": request_fingerprint,
        "created_at": context.now,
    }
    # A later operation with the same request_id answers from this one.
    state.records[request_id] = _PendingRecord(request_fingerprint, applied)
    return applied, record


class _PendingRecord:
    """A request record this batch writes, as later operations see it."""

    def __init__(self, request_fingerprint: str, applied: Applied) -> None:
        self.fingerprint = request_fingerprint
        self.applied = applied


def _record_answers(
    context: WriteContext,
    writes: Writes,
    answered: list[tuple[dict[str, Any], Applied]],
    log_ids: list[int],
) -> None:
    if not answered:
        return
    # write_batch returns log ids only when an answered operation needs them.
    ids = (
        {id(row): log_id for row, log_id in zip(writes.logs, log_ids, strict=True)}
        if log_ids
        else {}
    )
    records: list[dict[str, Any]] = []
    for record, applied in answered:
        if applied.log_rows is not None:
            applied.response = pb.AppendLogsResponse(
                logs=[
                    log_message({**row, "id": ids[id(row)]}) for row in applied.log_rows
                ]
            )
        assert applied.response is not None
        records.append(
            {
                **record,
                "response": applied.response.SerializeToString(deterministic=True),
            }
        )
    idempotency.defer_insert_records(context, records)
