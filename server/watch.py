"""WatchSession and WaitForCoverage: re-read a session whenever the change
feed says it may have changed, and at least every poll interval.

A watcher subscribes before it reads, so a change committed between the read
and the wait still wakes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server import validation
from server.errors import DeadlineExceeded, Unavailable

if TYPE_CHECKING:
    from server.servicer import ProcessFlowServicer

FINAL_STATUSES = validation.FINAL_SESSION_STATUSES


def _steps(steps: Any) -> list[tuple[str, int, int]]:
    flat: list[tuple[str, int, int]] = []
    for step in steps:
        flat.append((step.step_id, step.updated_at.seconds, step.updated_at.nanos))
        flat.extend(_steps(step.children))
    return flat


def _log_count(session: res.Session) -> int:
    def count(steps: Any) -> int:
        return sum(len(step.logs) + count(step.children) for step in steps)

    return len(session.logs) + count(session.steps)


def describe_change(before: res.Session, after: res.Session) -> str | None:
    """The event type that best names what changed; None when nothing did."""
    if before.SerializeToString(deterministic=True) == after.SerializeToString(
        deterministic=True
    ):
        return None
    if after.status != before.status and after.status in FINAL_STATUSES:
        return "session_completed"
    if len(after.llm_calls) != len(before.llm_calls):
        return "llm_call_recorded"
    if _steps(after.steps) != _steps(before.steps):
        return "step_recorded"
    if _log_count(after) != _log_count(before):
        return "logs_appended"
    if after.coverage != before.coverage:
        return "coverage_changed"
    return "session_updated"


def _wait_seconds(
    servicer: ProcessFlowServicer, context: grpc.aio.ServicerContext[Any, Any]
) -> float | None:
    """How long to wait for a wake-up; None when the deadline has passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return servicer.poll_interval_seconds
    if remaining <= 0.005:
        return None
    return min(servicer.poll_interval_seconds, remaining)


async def watch_session(
    servicer: ProcessFlowServicer,
    tenant_id: str,
    request: pb.WatchSessionRequest,
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[pb.WatchSessionResponse]:
    validation.check(validation.validate_session_id(request.session_id))
    store, feed = servicer.store, servicer.feed
    with feed.subscribe(request.session_id) as subscription:
        session = await servicer.run(store.get_session, tenant_id, request.session_id)
        revision = 1
        yield pb.WatchSessionResponse(session=session, change="snapshot", revision=1)
        while session.status not in FINAL_STATUSES and not feed.closed:
            timeout = _wait_seconds(servicer, context)
            if timeout is None:
                return
            await subscription.wait(timeout)
            if feed.closed:
                return
            latest = await servicer.run(
                store.get_session, tenant_id, request.session_id
            )
            change = describe_change(session, latest)
            if change is None:
                continue
            revision += 1
            session = latest
            yield pb.WatchSessionResponse(
                session=session, change=change, revision=revision
            )


async def wait_for_coverage(
    servicer: ProcessFlowServicer,
    tenant_id: str,
    session_id: str,
    context: grpc.aio.ServicerContext[Any, Any],
) -> res.Coverage:
    validation.check(validation.validate_session_id(session_id))
    store, feed = servicer.store, servicer.feed
    with feed.subscribe(session_id) as subscription:
        while True:
            coverage = await servicer.run(store.get_coverage, tenant_id, session_id)
            if coverage.pending_events == 0 and coverage.parked_events == 0:
                return coverage
            if feed.closed:
                raise Unavailable("the server is shutting down; call again")
            timeout = _wait_seconds(servicer, context)
            if timeout is None:
                raise DeadlineExceeded(
                    f"session {session_id!r} not covered before the deadline: "
                    f"{coverage.pending_events} pending, "
                    f"{coverage.parked_events} parked"
                )
            await subscription.wait(timeout)
