"""Relay drain: a backlog of pending outbox events written with COPY while
no relay runs, then one ``processflow relay`` process started against it and
timed until nothing is pending. Also the coverage-lag query."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

from bench import processes
from bench.databases import conninfo
from bench.stats import Throughput, poll_delay
from bench.workload import SessionRun
from processflow.v1 import events_pb2

LEGACY_ROW_TABLES = (
    "PromptSuccessTracking",
    "LLMUsageLogs",
    "processflow_applied_events",
)


def backlog_events(
    runs: Iterator[SessionRun], count: int
) -> list[events_pb2.OutboxEvent]:
    created_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    events: list[events_pb2.OutboxEvent] = []
    while len(events) < count:
        events.extend(next(runs).events(created_at))
    return events[:count]


def write_backlog(url: str, events: Sequence[events_pb2.OutboxEvent]) -> None:
    """Pending outbox rows exactly as the server writes them."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with psycopg.connect(conninfo(url)) as connection, connection.cursor() as cursor:
        with cursor.copy(
            'COPY process_flow_outbox (event_id, session_id, "sequence", event_type, '
            "payload, status, attempts, next_attempt_at, created_at) FROM STDIN"
        ) as copy:
            for event in events:
                copy.write_row(
                    (
                        event.event_id,
                        event.session_id,
                        event.sequence,
                        event.WhichOneof("payload"),
                        event.SerializeToString(),
                        "pending",
                        0,
                        now,
                        now,
                    )
                )
        connection.commit()
        connection.execute("ANALYZE process_flow_outbox")
        connection.commit()


def pending_events(connection: psycopg.Connection[tuple[int]]) -> int:
    row = connection.execute(
        "SELECT count(*) FROM process_flow_outbox WHERE status = 'pending'"
    ).fetchone()
    return int(row[0]) if row else 0


def any_pending(connection: psycopg.Connection[tuple[int]]) -> bool:
    """One probe of the partial index on pending events: cheap at any size."""
    row = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM process_flow_outbox WHERE status = 'pending')"
    ).fetchone()
    return bool(row and row[0])


def wait_until_drained(
    url: str, child: processes.Child | None, timeout_seconds: float
) -> tuple[int, float, int]:
    """Polls the outbox until nothing is pending or the time is up. Returns
    (events settled while timed, seconds, events still pending), timing from
    the first count that saw an event settled to the poll that saw none left.

    A count over a large backlog costs the database tens of milliseconds, so
    the pending events are counted only until the first one settles (each
    count spaced by what the last one cost, ``poll_delay``) and once more if
    the time runs out; in between, an existence probe polls for the end."""
    deadline = time.monotonic() + timeout_seconds
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        initial = pending = pending_events(connection)
        first_seen: float | None = None
        pending_at_first = initial
        while pending:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                pending = pending_events(connection)
                break
            polled = time.perf_counter()
            if first_seen is None:
                counted = pending_events(connection)
                if counted < initial:
                    first_seen, pending_at_first = polled, counted
                pending = counted
            elif not any_pending(connection):
                pending = 0
            if pending:
                time.sleep(poll_delay(time.perf_counter() - polled))
        finished = time.perf_counter()
    if first_seen is None:
        return 0, 0.0, pending
    return pending_at_first - pending, finished - first_seen, pending


def drain(
    url: str,
    legacy_url: str | None,
    events: Sequence[events_pb2.OutboxEvent],
    log_dir: Path,
    name: str,
    timeout_seconds: float,
) -> tuple[Throughput, float | None, int]:
    """(events per second into the legacy tables, relay peak RSS in MiB,
    events left pending when the time ran out)."""
    write_backlog(url, events)
    args = ["relay", "--database-url", url]
    if legacy_url:
        args += ["--legacy-database-url", legacy_url]
    child = processes.start(name, processes.processflow_command(*args), log_dir)
    try:
        settled, seconds, left = wait_until_drained(url, child, timeout_seconds)
        rss = child.peak_rss_mib()
    finally:
        child.stop()
    return Throughput(settled, seconds), rss, left


def legacy_row_counts(legacy_url: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(conninfo(legacy_url)) as connection:
        for table in LEGACY_ROW_TABLES:
            row = connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


def coverage_lags_ms(url: str, since: dt.datetime) -> list[float]:
    """Per event written since ``since``: ledger applied_at - outbox created_at."""
    with psycopg.connect(conninfo(url)) as connection:
        rows = connection.execute(
            "SELECT EXTRACT(EPOCH FROM (a.applied_at - o.created_at)) * 1000 "
            "FROM process_flow_outbox o "
            "JOIN processflow_applied_events a ON a.event_id = o.event_id "
            "WHERE o.created_at >= %s",
            (since,),
        ).fetchall()
    return [float(row[0]) for row in rows]
