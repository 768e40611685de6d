"""The gRPC servicer: hands each call to the synchronous store on a thread
pool and answers with its result. Errors become status codes in the
boundary wrapper (server/interceptors.py), not here.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeAlias, TypeVar

import grpc

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server.auth import ALL_TENANTS, ID_PATTERN, analytics_tenant, current_principal
from server.errors import FieldViolation, InvalidArgument
from server.store import Store
from server.store.changes import ChangeFeed
from server.watch import wait_for_coverage, watch_session

T = TypeVar("T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# The analytics RPCs live in server/analytics.py, written separately; without
# it they answer UNIMPLEMENTED.


def load_analytics() -> ModuleType | None:
    try:
        return importlib.import_module("server.analytics")
    except ModuleNotFoundError as error:
        if error.name == "server.analytics":
            return None
        raise


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's tenant, as the auth wrapper admitted it ("" with
    authentication off)."""
    return current_principal().tenant


def check_tenant_field(request: Any) -> None:
    asked = request.tenant_id
    if asked and asked != ALL_TENANTS and not ID_PATTERN.fullmatch(asked):
        raise InvalidArgument(
            [
                FieldViolation(
                    "tenant_id",
                    "must be '*' or 1 to 128 characters from A-Z, a-z, 0-9, "
                    "'.', '_', ':', '-'",
                )
            ]
        )


class ProcessFlowServicer(pb_grpc.ProcessFlowServiceServicer):
    def __init__(
        self,
        store: Store,
        executor: ThreadPoolExecutor,
        feed: ChangeFeed,
        *,
        poll_interval_seconds: float,
    ) -> None:
        self.store = store
        self.executor = executor
        self.feed = feed
        self.poll_interval_seconds = poll_interval_seconds
        self.analytics = load_analytics()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Runs a store call on the database threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(function, *args)
        )

    async def _analytics(self, name: str, request: Any, context: Context) -> Any:
        if self.analytics is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "analytics are not available"
            )
        check_tenant_field(request)
        # The auth wrapper has checked the admin scope another tenant needs.
        tenant = analytics_tenant(current_principal(), request)
        function = getattr(self.analytics, name)
        return await self.run(function, self.store, tenant, request)

    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: Context
    ) -> pb.GetUsageSummaryResponse:
        response: pb.GetUsageSummaryResponse = await self._analytics(
            "get_usage_summary", request, context
        )
        return response

    async def GetSuccessSummary(
        self, request: pb.GetSuccessSummaryRequest, context: Context
    ) -> pb.GetSuccessSummaryResponse:
        response: pb.GetSuccessSummaryResponse = await self._analytics(
            "get_success_summary", request, context
        )
        return response

    async def GetStepPerformance(
        self, request: pb.GetStepPerformanceRequest, context: Context
    ) -> pb.GetStepPerformanceResponse:
        response: pb.GetStepPerformanceResponse = await self._analytics(
            "get_step_performance", request, context
        )
        return response

    async def StartSession(
        self,
        request: pb.StartSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.StartSessionResponse:
        return await self.run(self.store.start_session, tenant_of(context), request)

    async def RecordStep(
        self,
        request: pb.RecordStepRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RecordStepResponse:
        return await self.run(self.store.record_step, tenant_of(context), request)

    async def AppendLogs(
        self,
        request: pb.AppendLogsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.AppendLogsResponse:
        return await self.run(self.store.append_logs, tenant_of(context), request)

    async def RecordLlmCall(
        self,
        request: pb.RecordLlmCallRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.RecordLlmCallResponse:
        return await self.run(self.store.record_llm_call, tenant_of(context), request)

    async def CompleteSession(
        self,
        request: pb.CompleteSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.CompleteSessionResponse:
        return await self.run(self.store.complete_session, tenant_of(context), request)

    async def Ingest(
        self,
        request: pb.IngestRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.IngestResponse:
        return await self.run(self.store.ingest, tenant_of(context), request)

    async def GetSession(
        self,
        request: pb.GetSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetSessionResponse:
        session = await self.run(
            self.store.get_session, tenant_of(context), request.session_id
        )
        return pb.GetSessionResponse(session=session)

    async def ListSessions(
        self,
        request: pb.ListSessionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ListSessionsResponse:
        return await self.run(self.store.list_sessions, tenant_of(context), request)

    async def WatchSession(
        self,
        request: pb.WatchSessionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.WatchSessionResponse]:
        async for message in watch_session(self, tenant_of(context), request, context):
            yield message

    async def WaitForCoverage(
        self,
        request: pb.WaitForCoverageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.WaitForCoverageResponse:
        coverage = await wait_for_coverage(
            self, tenant_of(context), request.session_id, context
        )
        return pb.WaitForCoverageResponse(coverage=coverage)
