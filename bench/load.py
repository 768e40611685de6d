"""The load generator: asyncio clients over one ``grpc.aio`` channel.

Closed loop (``run_closed_loop``): each of ``concurrency`` clients runs
sessions back to back for a measured interval after a warm-up. Open loop
(``run_paced``): calls are scheduled at a fixed rate and clients pick up the
next scheduled call, so a slow answer delays no later schedule.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import grpc
from google.protobuf import message as pb_message

from bench.echo import METHOD as ECHO_METHOD
from bench.stats import Throughput
from bench.workload import Call, SessionRun
from processflow.v1 import processflow_service_pb2_grpc as api_grpc

CALL_TIMEOUT_SECONDS = 30.0


class Target(Protocol):
    async def call(self, call: Call) -> None: ...


class ProcessFlowTarget:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = api_grpc.ProcessFlowServiceStub(channel)

    async def call(self, call: Call) -> None:
        await getattr(self._stub, call.method)(
            call.request, timeout=CALL_TIMEOUT_SECONDS
        )


def _serialize(request: pb_message.Message) -> bytes:
    return request.SerializeToString()


def _identity(data: bytes) -> bytes:
    return data


class EchoTarget:
    """Sends the same serialized request and parses the answer back into the
    request type, so the client does the same protobuf work either way."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._echo = channel.unary_unary(
            ECHO_METHOD, request_serializer=_serialize, response_deserializer=_identity
        )

    async def call(self, call: Call) -> None:
        answer = await self._echo(call.request, timeout=CALL_TIMEOUT_SECONDS)
        type(call.request).FromString(answer)


class _Tally:
    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.first_error = ""
        self.latencies_ms: list[float] = []

    def error(self, error: grpc.aio.AioRpcError) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{error.code().name}: {error.details()}"


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )


async def wait_for_channel(address: str, timeout: float = 30.0) -> None:
    async with channel(address) as probe:
        await asyncio.wait_for(probe.channel_ready(), timeout)


async def run_closed_loop(
    target: Target,
    runs: Iterator[SessionRun],
    *,
    concurrency: int,
    duration_seconds: float,
    warmup_seconds: float,
) -> tuple[Throughput, str]:
    """Calls completed per second over the measured interval, with latencies."""
    tally = _Tally()
    begin = time.perf_counter() + warmup_seconds
    end = begin + duration_seconds

    async def client() -> None:
        while True:
            for call in next(runs).calls():
                started = time.perf_counter()
                try:
                    await target.call(call)
                except grpc.aio.AioRpcError as error:
                    tally.error(error)
                    break
                finished = time.perf_counter()
                if begin <= started and finished <= end:
                    tally.count += 1
                    tally.latencies_ms.append((finished - started) * 1000)
                if finished >= end:
                    return

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result = Throughput(
        tally.count, duration_seconds, tuple(tally.latencies_ms), tally.errors
    )
    return result, tally.first_error


def unary_calls(runs: Iterator[SessionRun]) -> list[Call]:
    """The next run, one unary call a write."""
    return next(runs).calls()


async def run_paced(
    target: Target,
    runs: Iterator[SessionRun],
    *,
    rate_per_second: float,
    duration_seconds: float,
    clients: int,
    calls_of: Callable[[Iterator[SessionRun]], list[Call]] = unary_calls,
) -> tuple[Throughput, str]:
    """Events at a steady rate for ``duration_seconds``, sent as the calls
    ``calls_of`` makes of the runs it takes; a call carrying n events takes
    n slots of the schedule. The result counts events, and its rate is what
    was achieved (a server slower than the rate answers fewer)."""
    tally = _Tally()
    scheduled = 0
    total = int(rate_per_second * duration_seconds)
    loop = asyncio.get_running_loop()
    origin = loop.time() + 0.2
    end = origin + duration_seconds

    async def client() -> None:
        nonlocal scheduled
        while True:
            for call in calls_of(runs):
                slot = scheduled
                scheduled += call.events
                if slot >= total or loop.time() >= end:
                    return
                delay = origin + slot / rate_per_second - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = time.perf_counter()
                try:
                    await target.call(call)
                except grpc.aio.AioRpcError as error:
                    tally.error(error)
                    break
                tally.count += call.events
                tally.latencies_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = max(loop.time() - origin, 1e-9)
    result = Throughput(tally.count, elapsed, tuple(tally.latencies_ms), tally.errors)
    return result, tally.first_error
