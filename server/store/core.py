"""The store: the one object the servicer (and later the analytics module)
talks to. Every method takes the tenant id first; it is "" until
authentication assigns tenants.

Writes validate, run in one transaction (rows + outbox events + request_id
record), commit, then call the commit listeners with the sessions touched.
Reads run in one short transaction each.

A write with a request_id seen before answers from its record (see
idempotency.py): when the record's INSERT fails on its key, or when the
write fails with a domain error, the stored record is looked up. An Ingest
that collides with a concurrent writer on a client-chosen key runs again,
and then sees that writer's rows.
"""

from __future__ import annotations

import functools
import logging
import threading
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message

from processflow import migrate
from processflow.db import create_engine, is_postgresql, utcnow
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import schema, validation
from server.errors import ProcessFlowError, Unavailable
from server.store import (
    idempotency,
    ingest,
    llm_calls,
    logs,
    outbox,
    reads,
    sessions,
    steps,
)
from server.store.transaction import (
    WriteContext,
    fingerprint,
    run_in_transaction,
    run_read,
)
from server.validation import Limits

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
CommitListener = Callable[[frozenset[str]], None]
# Tables whose unique keys clients choose: a concurrent writer may take one
# between an Ingest's reads and its commit.
CLIENT_KEYED_TABLES = (
    schema.requests,
    schema.sessions,
    schema.steps,
    schema.llm_calls,
)
INGEST_ATTEMPTS = 3


@functools.cache
def _head_revision() -> str:
    return migrate.head_revision()


class Store:
    def __init__(self, engine: sa.Engine, limits: Limits | None = None) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.postgresql = is_postgresql(engine)
        self._listeners: list[CommitListener] = []
        self._listeners_lock = threading.Lock()

    @classmethod
    def connect(
        cls, database_url: str, *, pool_size: int = 5, limits: Limits | None = None
    ) -> Store:
        return cls(
            create_engine(database_url, pool_size=pool_size, pre_ping=False), limits
        )

    def close(self) -> None:
        self.engine.dispose()

    def add_commit_listener(self, callback: CommitListener) -> None:
        """``callback`` runs after every committed write, with the session ids
        the write touched. It must be quick and must not raise."""
        with self._listeners_lock:
            self._listeners.append(callback)

    # -- writes ---------------------------------------------------------------

    def start_session(
        self, tenant_id: str, request: pb.StartSessionRequest
    ) -> pb.StartSessionResponse:
        validation.check(validation.validate_start_session(request, self.limits))
        return self._write(
            tenant_id,
            "StartSession",
            request,
            pb.StartSessionResponse,
            sessions.start_session,
        )

    def record_step(
        self, tenant_id: str, request: pb.RecordStepRequest
    ) -> pb.RecordStepResponse:
        validation.check(validation.validate_record_step(request, self.limits))
        return self._write(
            tenant_id, "RecordStep", request, pb.RecordStepResponse, steps.record_step
        )

    def append_logs(
        self, tenant_id: str, request: pb.AppendLogsRequest
    ) -> pb.AppendLogsResponse:
        validation.check(validation.validate_append_logs(request, self.limits))
        return self._write(
            tenant_id, "AppendLogs", request, pb.AppendLogsResponse, logs.append_logs
        )

    def record_llm_call(
        self, tenant_id: str, request: pb.RecordLlmCallRequest
    ) -> pb.RecordLlmCallResponse:
        validation.check(validation.validate_record_llm_call(request, self.limits))
        return self._write(
            tenant_id,
            "RecordLlmCall",
            request,
            pb.RecordLlmCallResponse,
            llm_calls.record_llm_call,
        )

    def complete_session(
        self, tenant_id: str, request: pb.CompleteSessionRequest
    ) -> pb.CompleteSessionResponse:
        validation.check(validation.validate_complete_session(request, self.limits))
        return self._write(
            tenant_id,
            "CompleteSession",
            request,
            pb.CompleteSessionResponse,
            sessions.complete_session,
        )

    def ingest(self, tenant_id: str, request: pb.IngestRequest) -> pb.IngestResponse:
        validation.check(validation.validate_ingest(request, self.limits))
        return self._write(
            tenant_id,
            "Ingest",
            request,
            pb.IngestResponse,
            ingest.ingest,
            attempts=INGEST_ATTEMPTS,
        )

    def _write(
        self,
        tenant_id: str,
        method: str,
        request: Any,
        response_type: type[M],
        work: Callable[[WriteContext, Any], M],
        *,
        attempts: int = 1,
    ) -> M:
        request_id: str = request.request_id
        request_fingerprint = fingerprint(method, request) if request_id else ""

        def begin(connection: sa.Connection) -> WriteContext:
            return WriteContext(
                connection=connection,
                tenant_id=tenant_id,
                now=utcnow(),
                limits=self.limits,
                postgresql=self.postgresql,
            )

        def run(context: WriteContext) -> M:
            response = work(context, request)
            if request_id:
                record = idempotency.record_values(
                    context, request_id, method, request_fingerprint, response
                )
                idempotency.defer_insert_records(context, [record])
            return response

        attempt = 1
        while True:
            try:
                response, touched = run_in_transaction(
                    self.engine, begin, run, outbox.flush_events
                )
            except sa.exc.IntegrityError as error:
                if request_id and idempotency.is_duplicate_key(
                    error, [schema.requests]
                ):
                    stored = self._stored_answer(
                        tenant_id, request_id, request_fingerprint, response_type
                    )
                    if stored is not None:
                        return stored
                if attempt < attempts and idempotency.is_duplicate_key(
                    error, CLIENT_KEYED_TABLES
                ):
                    log.info(
                        "write collided with a concurrent writer; running it again",
                        extra={"event": "write_retried_after_conflict"},
                    )
                    attempt += 1
                    continue
                raise
            except Unavailable:
                raise
            except ProcessFlowError:
                stored = (
                    self._stored_answer(
                        tenant_id, request_id, request_fingerprint, response_type
                    )
                    if request_id
                    else None
                )
                if stored is not None:
                    return stored
                raise
            if touched:
                self._notify(touched)
            return typing.cast(M, response)

    def _stored_answer(
        self,
        tenant_id: str,
        request_id: str,
        request_fingerprint: str,
        response_type: type[M],
    ) -> M | None:
        """The answer stored for ``request_id``; None when it was never seen."""
        records = run_read(
            self.engine,
            lambda connection: idempotency.select_request_records(
                connection, tenant_id, [request_id]
            ),
        )
        record = records.get(request_id)
        if record is None:
            return None
        return response_type.FromString(
            idempotency.stored_answer(record, request_id, request_fingerprint)
        )

    def _notify(self, touched: frozenset[str]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(touched)
            except Exception:
                log.exception(
                    "commit listener failed", extra={"event": "commit_listener_failed"}
                )

    # -- reads ----------------------------------------------------------------

    def get_session(self, tenant_id: str, session_id: str) -> res.Session:
        validation.check(validation.validate_session_id(session_id))
        return run_read(
            self.engine,
            lambda connection: reads.get_session(connection, tenant_id, session_id),
        )

    def list_sessions(
        self, tenant_id: str, request: pb.ListSessionsRequest
    ) -> pb.ListSessionsResponse:
        validation.check(validation.validate_list_sessions(request))
        return run_read(
            self.engine,
            lambda connection: reads.list_sessions(connection, tenant_id, request),
        )

    def get_coverage(self, tenant_id: str, session_id: str) -> res.Coverage:
        validation.check(validation.validate_session_id(session_id))
        return run_read(
            self.engine,
            lambda connection: reads.get_coverage(connection, tenant_id, session_id),
        )

    # -- health ---------------------------------------------------------------

    def readiness_problem(self) -> str | None:
        """None when the database answers and is at the newest revision;
        otherwise why not."""
        head = _head_revision()

        def current_revision(connection: sa.Connection) -> tuple[bool, str | None]:
            if not sa.inspect(connection).has_table(migrate.MAIN_VERSION_TABLE):
                return False, None
            return True, connection.execute(
                sa.text(f"SELECT version_num FROM {migrate.MAIN_VERSION_TABLE}")
            ).scalar_one_or_none()

        try:
            migrated, current = run_read(self.engine, current_revision)
            if not migrated:
                return "database not migrated"
        except Unavailable:
            return "database unreachable"
        except sa.exc.SQLAlchemyError as error:
            return f"database error: {type(error).__name__}"
        if current != head:
            return f"database at revision {current}, expected {head}"
        return None
