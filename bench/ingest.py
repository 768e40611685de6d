"""Ingest throughput, and its baseline: psycopg COPY of the very rows the
server wrote, into a fresh database of the same schema."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import psycopg
import sqlalchemy as sa

from bench.databases import conninfo
from bench.stats import Throughput
from bench.workload import CALLS_PER_SESSION, SessionRun, ingest_operation
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import processflow_service_pb2_grpc as api_grpc
from server import schema


def build_requests(
    runs: Iterator[SessionRun], events: int, operations_per_request: int
) -> list[api.IngestRequest]:
    """Requests for one client; a session may straddle two consecutive ones,
    which is safe because one client sends its requests in order."""
    sessions = [next(runs) for _ in range(-(-events // CALLS_PER_SESSION))]
    operations = [
        ingest_operation(call, keep_request_id=False)
        for run in sessions
        for call in run.calls()
    ][:events]
    batch = f"{sessions[0].session_id}-batch" if sessions else "batch"
    return [
        api.IngestRequest(
            request_id=f"{batch}{i // operations_per_request}",
            operations=operations[i : i + operations_per_request],
        )
        for i in range(0, len(operations), operations_per_request)
    ]


async def run_ingest(
    channel: grpc.aio.Channel,
    runs: Iterator[SessionRun],
    *,
    events: int,
    operations_per_request: int,
    clients: int,
    max_seconds: float,
) -> tuple[Throughput, str]:
    """Operations (= events) accepted per second; latencies are per request.
    No request starts after ``max_seconds``, so a slow server shortens the
    run instead of stretching it."""
    stub = api_grpc.ProcessFlowServiceStub(channel)
    per_client = [
        build_requests(runs, events // clients, operations_per_request)
        for _ in range(clients)
    ]
    latencies: list[float] = []
    problems: list[str] = []
    accepted = 0

    async def client(requests: list[api.IngestRequest]) -> None:
        nonlocal accepted
        for request in requests:
            started = time.perf_counter()
            if started > deadline:
                return
            try:
                await stub.Ingest(request, timeout=120)
            except grpc.aio.AioRpcError as error:
                problems.append(f"{error.code().name}: {error.details()}")
                return
            latencies.append((time.perf_counter() - started) * 1000)
            accepted += len(request.operations)

    deadline = time.perf_counter() + max_seconds
    started = time.perf_counter()
    await asyncio.gather(*(client(requests) for requests in per_client))
    elapsed = time.perf_counter() - started
    result = Throughput(accepted, elapsed, tuple(latencies), len(problems))
    return result, problems[0] if problems else ""


def count_outbox_events(url: str, prefix: str) -> int:
    with psycopg.connect(conninfo(url)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM process_flow_outbox WHERE session_id LIKE %s",
            (prefix + "-%",),
        ).fetchone()
    return int(row[0]) if row else 0


def _copied_columns(table: sa.Table) -> list[sa.Column[object]]:
    # Identity ids are assigned by the target, as they were by the server.
    return [
        c
        for c in table.columns
        if not (c.primary_key and c.autoincrement is True and c.name == "id")
    ]


def read_rows(
    url: str, prefix: str
) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    """The rows of the server's tables that belong to sessions (or requests)
    whose id starts with ``prefix``, as Python values (JSON as text)."""
    rows: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {}
    with psycopg.connect(conninfo(url)) as connection:
        for table in schema.metadata.sorted_tables:
            columns = _copied_columns(table)
            selected = ", ".join(
                f'"{c.name}"::text' if isinstance(c.type, sa.JSON) else f'"{c.name}"'
                for c in columns
            )
            key = "session_id" if "session_id" in table.columns else "request_id"
            fetched = connection.execute(
                f'SELECT {selected} FROM "{table.name}" WHERE "{key}" LIKE %s',
                (prefix + "-%",),
            ).fetchall()
            rows[table.name] = ([c.name for c in columns], fetched)
    return rows


def copy_rows(
    url: str, rows: dict[str, tuple[list[str], list[tuple[object, ...]]]]
) -> Throughput:
    """Loads ``rows`` with COPY in one transaction; counts outbox rows as events."""
    started = time.perf_counter()
    with psycopg.connect(conninfo(url)) as connection, connection.cursor() as cursor:
        for table in schema.metadata.sorted_tables:
            names, values = rows[table.name]
            if not values:
                continue
            column_list = ", ".join(f'"{name}"' for name in names)
            with cursor.copy(f'COPY "{table.name}" ({column_list}) FROM STDIN') as copy:
                for row in values:
                    copy.write_row(row)
        connection.commit()
    elapsed = time.perf_counter() - started
    return Throughput(len(rows[schema.outbox.name][1]), elapsed)
