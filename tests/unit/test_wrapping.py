"""The boundary and auth wrappers are applied once per method when the
service is registered, outermost first, and every call runs through them;
and the collector tuning of the long-running commands takes effect."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from processflow.runtime import YOUNG_THRESHOLD, tune_garbage_collector
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server.interceptors import add_wrapped_service
from server.servicer import ProcessFlowServicer
from server.store.changes import ChangeFeed

METHODS = pb.DESCRIPTOR.services_by_name["ProcessFlowService"].methods


class EchoStore:
    def start_session(self, tenant_id: str, request: Any) -> Any:
        return pb.StartSessionResponse()


class Recording:
    """A pass-through wrapper that records when it wraps and when it runs."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail
        self.wrapped: list[str] = []

    def wrap_unary(
        self, method: str, behaviour: Callable[[Any, Any], Any]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        self.wrapped.append(method)

        async def handle(request: Any, context: Any) -> Any:
            self.trail.append(f"{self.name}:{method}")
            response = behaviour(request, context)
            if asyncio.iscoroutine(response):
                response = await response
            return response

        return handle

    def wrap_stream(
        self, method: str, behaviour: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        self.wrapped.append(method)
        return behaviour


async def serve_three_calls(wrappers: list[Recording]) -> None:
    server = grpc.aio.server()
    servicer = ProcessFlowServicer(
        EchoStore(),  # type: ignore[arg-type]
        ThreadPoolExecutor(max_workers=1),
        ChangeFeed(),
        poll_interval_seconds=0.1,
    )
    add_wrapped_service(
        server,
        pb_grpc.add_ProcessFlowServiceServicer_to_server,
        servicer,
        wrappers,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            for _ in range(3):
                await stub.StartSession(pb.StartSessionRequest(), timeout=10)
    finally:
        await server.stop(None)


def test_wrappers_are_built_once_and_run_outermost_first() -> None:
    trail: list[str] = []
    outer, inner = Recording("outer", trail), Recording("inner", trail)
    asyncio.run(serve_three_calls([outer, inner]))
    every_method = sorted(method.name for method in METHODS)
    assert sorted(outer.wrapped) == every_method
    assert sorted(inner.wrapped) == every_method
    assert trail == ["outer:StartSession", "inner:StartSession"] * 3


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_collector_tuning(restored_collector: None) -> None:
    tune_garbage_collector()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0
