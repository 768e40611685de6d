"""The relay's baseline: procrastinate, a general-purpose PostgreSQL job
queue, applying the same legacy inserts as one job per event.

Jobs of one session share a procrastinate ``lock`` so that they run in order,
the same ordering promise the relay keeps. Jobs are deferred before the clock
starts; the measured part is one worker draining the queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Sequence

import procrastinate
import psycopg
import psycopg_pool
from procrastinate.types import JSONValue

from bench.databases import conninfo
from bench.legacy_apply import apply_event
from bench.stats import Throughput, poll_delay
from processflow.v1 import events_pb2

WORKER_CONCURRENCY = 8


async def run_peer_queue(
    url: str, events: Sequence[events_pb2.OutboxEvent], max_seconds: float
) -> Throughput:
    """Applies ``events`` through procrastinate; events per second, counting
    the jobs finished when the queue is empty or ``max_seconds`` have passed."""
    pool: psycopg_pool.AsyncConnectionPool = psycopg_pool.AsyncConnectionPool(
        conninfo(url),
        min_size=WORKER_CONCURRENCY,
        max_size=WORKER_CONCURRENCY,
        open=False,
    )
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo(url))
    )

    @app.task(name="apply_legacy_event")
    async def apply_legacy_event(payload: str) -> None:
        async with pool.connection() as connection, connection.transaction():
            await apply_event(connection, base64.b64decode(payload))

    await pool.open()
    try:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            by_session: dict[str, list[dict[str, JSONValue]]] = {}
            for event in events:
                by_session.setdefault(event.session_id, []).append(
                    {"payload": base64.b64encode(event.SerializeToString()).decode()}
                )
            for session_id, jobs in by_session.items():
                await apply_legacy_event.configure(lock=session_id).batch_defer_async(
                    *jobs
                )
            started = time.perf_counter()
            # A worker told not to wait stops at the first moment every
            # remaining job is behind a held lock, so it waits, and is
            # stopped once the queue is empty.
            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=WORKER_CONCURRENCY,
                    install_signal_handlers=False,
                    fetch_job_polling_interval=0.05,
                )
            )
            done = await _wait_until_drained(url, worker, started + max_seconds)
            elapsed = time.perf_counter() - started
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    finally:
        await pool.close()
    return Throughput(done, elapsed)


async def _wait_until_drained(
    url: str, worker: asyncio.Task[None], deadline: float
) -> int:
    """Jobs succeeded once none is left or the deadline (perf_counter) passed."""
    async with await psycopg.AsyncConnection.connect(
        conninfo(url), autocommit=True
    ) as db:
        while True:
            if worker.done():
                worker.result()
                raise RuntimeError("procrastinate worker stopped with jobs left")
            counting = time.perf_counter()
            cursor = await db.execute(
                "SELECT count(*) FILTER (WHERE status IN ('todo', 'doing')), "
                "count(*) FILTER (WHERE status = 'succeeded') FROM procrastinate_jobs"
            )
            row = await cursor.fetchone()
            assert row is not None
            if row[0] == 0 or time.perf_counter() > deadline:
                return int(row[1])
            await asyncio.sleep(poll_delay(time.perf_counter() - counting))
