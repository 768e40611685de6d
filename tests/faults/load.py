"""Client load: threads that each write sessions through the real server,
retrying a failed call with the same request_id, as a careful client does.

A write is *accepted* once the server acknowledged it. A write whose retries
ran out has an *unknown* outcome: it may have committed before the answer
was lost. Those are counted apart and read back at the end. Some writes are
deliberately sent twice with the same request_id (a client retry after a
lost answer); the second answer must equal the first.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from tests.faults.system import API_KEY, POISON_MODEL

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A server bug, counted and failed on at the end; retrying it with the
    # same request_id is still safe and keeps the load (and the count) going.
    grpc.StatusCode.INTERNAL,
}
CALL_TIMEOUT_SECONDS = 10.0
GIVE_UP_SECONDS = 90.0
REPLAY_PROBABILITY = 0.1


@dataclass
class SessionRecord:
    """What the server acknowledged for one session."""

    session_id: str
    steps: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    logs: int = 0
    completed: bool = False
    writes: int = 0


@dataclass
class LoadFigures:
    accepted: int = 0
    unknown: int = 0
    retries: int = 0
    internal_errors: int = 0
    replays: int = 0
    replay_mismatches: int = 0
    unexpected: list[str] = field(default_factory=list)


class Load:
    def __init__(self, address: str, clients: int, seed: int = 7) -> None:
        self.address = address
        self.clients = clients
        self.seed = seed
        self.stop = threading.Event()
        self.poison = threading.Event()
        self.sessions: dict[str, SessionRecord] = {}
        self.unknown_writes: list[tuple[str, str, str]] = []  # session, method, id
        self.figures = LoadFigures()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.clients):
            thread = threading.Thread(
                target=self._client, args=(index,), name=f"load-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def finish(self, timeout: float = GIVE_UP_SECONDS + 30) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"client threads did not finish: {alive}"

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.figures, name, getattr(self.figures, name) + delta)

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        metadata = (("authorization", f"Bearer {API_KEY}"),)
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            while not self.stop.is_set():
                try:
                    self._session(stub, metadata, rng)
                except Exception as error:
                    with self._lock:
                        self.figures.unexpected.append(repr(error))
                    return

    def _call(
        self,
        stub: Any,
        metadata: Any,
        rng: random.Random,
        record: SessionRecord,
        method: str,
        request: Any,
    ) -> Any | None:
        """The answer, or None when the outcome stayed unknown."""
        began = time.monotonic()
        while True:
            try:
                answer = getattr(stub, method)(
                    request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
                break
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code not in RETRYABLE:
                    raise AssertionError(
                        f"{method} {request.request_id}: {code} {error.details()}"  # type: ignore[attr-defined]
                    ) from None
                if time.monotonic() - began > GIVE_UP_SECONDS:
                    self._count(unknown=1)
                    with self._lock:
                        self.unknown_writes.append(
                            (record.session_id, method, request.request_id)
                        )
                    return None
                self._count(
                    retries=1, internal_errors=int(code == grpc.StatusCode.INTERNAL)
                )
                time.sleep(rng.uniform(0.05, 0.5))
        self._count(accepted=1)
        record.writes += 1
        if rng.random() < REPLAY_PROBABILITY:
            again = self._replay(stub, metadata, method, request)
            self._count(replays=1, replay_mismatches=int(again != answer))
        return answer

    def _replay(self, stub: Any, metadata: Any, method: str, request: Any) -> Any:
        for _ in range(100):
            try:
                return getattr(stub, method)(
                    request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE:  # type: ignore[attr-defined]
                    raise
                time.sleep(0.2)
        raise AssertionError(f"replay of {request.request_id} never answered")

    def _session(self, stub: Any, metadata: Any, rng: random.Random) -> None:
        session_id = f"f-{uuid.uuid4().hex[:16]}"
        record = SessionRecord(session_id)
        with self._lock:
            self.sessions[session_id] = record

        def rid() -> str:
            return uuid.uuid4().hex

        def call(method: str, request: Any) -> Any | None:
            return self._call(stub, metadata, rng, record, method, request)

        started = pb.StartSessionRequest(
            request_id=rid(), session_id=session_id, user_id=f"user-{rng.randrange(5)}",
            query="How many orders shipped last week?", intent="aggregation",
        )  # fmt: skip
        if call("StartSession", started) is None:
            return
        for step_id, code in (("s-auth", "auth"), ("s-prompt", "prompt-building")):
            step = pb.RecordStepRequest(
                request_id=rid(), session_id=session_id, step_id=step_id,
                step_type=code, status=res.STEP_STATUS_COMPLETED, confidence=0.9,
                output_data=f"{code} done",
            )  # fmt: skip
            if call("RecordStep", step) is None:
                return
            record.steps.add(step_id)
        call_id = f"{session_id}-c1"
        model = POISON_MODEL if self.poison.is_set() else "gpt-4o"
        llm = pb.RecordLlmCallRequest(
            request_id=rid(), session_id=session_id, step_id="s-prompt",
            call_id=call_id, provider="openai", model=model, prompt_text="p",
            response_text="SELECT 1", input_tokens=100, output_tokens=20,
            cost_usd=0.0012, duration_ms=850,
        )  # fmt: skip
        if call("RecordLlmCall", llm) is None:
            return
        record.calls.add(call_id)
        logs = pb.AppendLogsRequest(
            request_id=rid(), session_id=session_id,
            logs=[pb.LogInput(message="generated"), pb.LogInput(message="ran")],
        )  # fmt: skip
        if call("AppendLogs", logs) is None:
            return
        record.logs += 2
        done = pb.CompleteSessionRequest(
            request_id=rid(), session_id=session_id,
            status=res.SESSION_STATUS_COMPLETED, generated_sql="SELECT 1",
            overall_confidence=0.8,
        )  # fmt: skip
        if call("CompleteSession", done) is not None:
            record.completed = True
