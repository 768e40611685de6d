"""The Python tracker against a real server: nesting, timing, errors,
decorators, sync and async."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from processflow.client import (
    AsyncTracker,
    Tracker,
    TrackerError,
    current_session,
    current_step,
)
from processflow.v1 import resources_pb2 as res
from tests.support.server import InProcessServer, in_process_server


@pytest.fixture
def server(sqlite_url: str) -> Iterator[InProcessServer]:
    with in_process_server(sqlite_url) as running:
        yield running


def flatten(steps: Iterable[res.Step]) -> dict[str, res.Step]:
    found: dict[str, res.Step] = {}
    for step in steps:
        found[step.step_type] = step
        found.update(flatten(step.children))
    return found


def test_session_records_nested_timed_steps_and_llm_calls(
    server: InProcessServer,
) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with (
        Tracker(server.address) as pf,
        pf.session(
            user_id="u1",
            query="top customers",
            intent="ranking",
            tables_retrieved=["Customers"],
        ) as s,
    ):
        with s.step("auth") as auth:
            auth.confidence = 0.99
        with s.step("prompt-building") as b:
            with b.step("context-gathering") as gather:
                time.sleep(0.05)  # work being measured
                gather.tokens_used = 120
            # Opened on the session, but inside b: nests under b too.
            with s.step("prompt-assembly"):
                pass
            b.output = "PROMPT TEXT"
            b.log("prompt built", details={"chars": 11})
        with s.step("ai-generation"):
            s.llm_call(
                provider="openai",
                model="gpt-4o",
                prompt_text="PROMPT TEXT",
                response_text="SELECT 1",
                input_tokens=100,
                output_tokens=20,
                cost_usd=0.0012,
                duration_ms=800,
            )
        s.llm_call(provider="openai", model="gpt-4o-mini", input_tokens=5)
        s.complete(generated_sql="SELECT 1", overall_confidence=0.9)
        session = pf.get_session(s.session_id)
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    assert session.status == res.SESSION_STATUS_COMPLETED
    assert session.generated_sql == "SELECT 1"
    assert session.intent == "ranking"
    assert list(session.tables_retrieved) == ["Customers"]
    steps = flatten(session.steps)
    assert [s.step_type for s in session.steps] == [
        "auth",
        "prompt-building",
        "ai-generation",
    ]
    building = steps["prompt-building"]
    assert {c.step_type for c in building.children} == {
        "context-gathering",
        "prompt-assembly",
    }
    assert steps["context-gathering"].parent_step_id == building.step_id
    assert steps["prompt-assembly"].parent_step_id == building.step_id
    assert building.output_data == "PROMPT TEXT"
    assert building.name == "Prompt Construction"
    assert [log.message for log in building.logs] == ["prompt built"]
    assert steps["auth"].confidence == pytest.approx(0.99)
    assert steps["context-gathering"].tokens_used == 120
    for step in steps.values():
        assert step.status == res.STEP_STATUS_COMPLETED
        start, end = step.start_time.ToDatetime(), step.end_time.ToDatetime()
        assert before <= start <= end <= after
        assert step.duration_ms == pytest.approx(
            (end - start).total_seconds() * 1000, abs=1
        )
    assert 50 <= steps["context-gathering"].duration_ms < 5000
    assert steps["prompt-building"].duration_ms >= 50
    calls = {call.model: call for call in session.llm_calls}
    assert calls["gpt-4o"].step_id == steps["ai-generation"].step_id
    assert calls["gpt-4o-mini"].step_id == ""
    assert session.transparency.api_call_count == 2
    assert session.transparency.total_tokens == 125


def test_exceptions_mark_the_step_and_session_as_errors_and_propagate(
    server: InProcessServer,
) -> None:
    with Tracker(server.address) as pf:
        with pytest.raises(ValueError, match="bad column"):  # noqa: SIM117
            with pf.session(user_id="u1", query="q") as s:
                with s.step("sql-execution") as execution:
                    with execution.step("query-execution"):
                        raise ValueError("bad column")
        session = pf.get_session(s.session_id)

    assert session.status == res.SESSION_STATUS_ERROR
    assert session.error_message == "ValueError: bad column"
    steps = flatten(session.steps)
    for code in ("sql-execution", "query-execution"):
        assert steps[code].status == res.STEP_STATUS_ERROR
        assert steps[code].error_message == "ValueError: bad column"
        assert steps[code].HasField("end_time")
    (entry,) = steps["query-execution"].logs
    assert entry.level == res.LOG_LEVEL_ERROR
    assert "Traceback" in entry.exception and "bad column" in entry.exception


def test_fail_skip_and_explicit_completion(server: InProcessServer) -> None:
    with Tracker(server.address) as pf:
        with pf.session(user_id="u1", query="q") as s:
            with s.step("sql-validation") as validation:
                validation.fail("unknown table")
            with s.step("sql-execution") as execution:
                execution.skip("validation failed")
            s.fail("could not validate the SQL")
        session = pf.get_session(s.session_id)

    steps = flatten(session.steps)
    assert steps["sql-validation"].status == res.STEP_STATUS_ERROR
    assert steps["sql-validation"].error_message == "unknown table"
    assert steps["sql-execution"].status == res.STEP_STATUS_SKIPPED
    assert [g.message for g in steps["sql-execution"].logs] == [
        "skipped: validation failed"
    ]
    # The context did not complete the session a second time.
    assert session.status == res.SESSION_STATUS_ERROR
    assert session.error_message == "could not validate the SQL"


def test_decorated_functions_become_nested_steps(server: InProcessServer) -> None:
    with Tracker(server.address) as pf:

        @pf.step("query-execution")
        def run_query(sql: str) -> str:
            step = current_step()
            if step is not None:  # None when called outside any session
                step.confidence = 0.8
            return f"3 rows for {sql}"

        @pf.step("sql-execution")
        def execute(sql: str) -> str:
            return run_query(sql)

        assert execute("SELECT 1") == "3 rows for SELECT 1"  # no session: unrecorded
        with pf.session(user_id="u1", query="q") as s:
            assert current_session() is s
            assert execute("SELECT 2") == "3 rows for SELECT 2"
        assert current_session() is None
        session = pf.get_session(s.session_id)

    (outer,) = session.steps
    assert outer.step_type == "sql-execution"
    assert outer.output_data == "3 rows for SELECT 2"
    (inner,) = outer.children
    assert inner.step_type == "query-execution"
    assert inner.parent_step_id == outer.step_id
    assert inner.confidence == pytest.approx(0.8)
    assert inner.output_data == "3 rows for SELECT 2"


def test_sync_tracker_decorates_coroutine_functions(server: InProcessServer) -> None:
    with Tracker(server.address) as pf:

        @pf.step("result-processing")
        async def process() -> int:
            await asyncio.sleep(0)
            raise RuntimeError("empty result")

        async def main() -> None:
            with pf.session(user_id="u1", query="q") as s:
                with pytest.raises(RuntimeError):
                    await process()
                s.complete()
            session = pf.get_session(s.session_id)
            (step,) = session.steps
            assert step.status == res.STEP_STATUS_ERROR
            assert step.error_message == "RuntimeError: empty result"

        asyncio.run(main())


def test_async_tracker_records_concurrent_sessions_apart(
    server: InProcessServer,
) -> None:
    async def main() -> list[res.Session]:
        async with AsyncTracker(server.address) as pf:

            @pf.step("openai-request")
            async def ask(model: str) -> str:
                await asyncio.sleep(0.02)
                return f"answer from {model}"

            async def run(user: str, fail: bool) -> str:
                s = pf.session(user_id=user, query=f"question of {user}")
                with pytest.raises(KeyError) if fail else _nothing():
                    async with s:
                        async with s.step("ai-generation") as generation:
                            await ask(user)
                            await generation.llm_call(model=user, input_tokens=7)
                        if fail:
                            raise KeyError("missing")
                return s.session_id

            ids = await asyncio.gather(run("a", False), run("b", True), run("c", False))
            return [await pf.get_session(i) for i in ids]

    sessions = asyncio.run(main())
    statuses = [s.status for s in sessions]
    assert statuses == [
        res.SESSION_STATUS_COMPLETED,
        res.SESSION_STATUS_ERROR,
        res.SESSION_STATUS_COMPLETED,
    ]
    for session in sessions:
        (generation,) = session.steps
        (request,) = generation.children
        assert request.parent_step_id == generation.step_id
        assert request.output_data == f"answer from {session.user_id}"
        (call,) = session.llm_calls
        assert call.model == session.user_id
        assert call.step_id == generation.step_id
    assert sessions[1].error_message == "KeyError: 'missing'"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def test_async_decorator_refuses_plain_functions() -> None:
    async def main() -> None:
        async with AsyncTracker("127.0.0.1:1") as tracker:
            with pytest.raises(TypeError, match="coroutine functions"):

                @tracker.step("auth")  # type: ignore[arg-type]
                def plain() -> None:
                    return None

    asyncio.run(main())


def test_refusals_name_the_bad_field_and_keep_the_block_error(
    server: InProcessServer,
) -> None:
    with Tracker(server.address) as pf:
        with pytest.raises(TrackerError) as refused:  # noqa: SIM117
            with pf.session(user_id="", query="q"):
                pass
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert ("user_id", "required") in refused.value.field_violations
        assert "user_id" in str(refused.value)

        with pf.session(user_id="u1", query="q") as s:
            with pytest.raises(TrackerError) as bad_step:  # noqa: SIM117
                with s.step("auth") as auth:
                    auth.confidence = 2.0
            assert bad_step.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in bad_step.value.field_violations] == ["confidence"]
            # A tracking failure while the block itself fails keeps the
            # block's exception.
            with pytest.raises(ZeroDivisionError):  # noqa: SIM117
                with s.step("sql-execution") as execution:
                    execution.confidence = 5.0
                    _ = 1 / 0


def test_the_api_key_travels_as_a_bearer_token(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "pf-test-key-0123456789"
    keys = tmp_path / "keys.jsonl"
    entry = {
        "key_id": "tests",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "tenant": "acme",
        "scopes": ["write", "read"],
    }
    keys.write_text(json.dumps(entry) + "\n")
    with in_process_server(sqlite_url, api_keys_file=str(keys)) as secured:
        with (
            Tracker(secured.address) as anonymous,
            pytest.raises(TrackerError) as refused,
        ):
            anonymous.get_session("any")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

        with Tracker(secured.address, api_key=key) as pf:
            with pf.session(user_id="u1", query="q") as s, s.step("auth"):
                pass
            assert pf.get_session(s.session_id).status == res.SESSION_STATUS_COMPLETED

        monkeypatch.setenv("PROCESSFLOW_API_KEY", key)
        with Tracker(secured.address) as from_environment:
            assert from_environment.get_session(s.session_id).session_id == s.session_id


def test_a_refused_completion_leaves_the_context_to_complete_the_session(
    server: InProcessServer,
) -> None:
    with Tracker(server.address) as pf:
        with pytest.raises(TrackerError) as refused:  # noqa: SIM117
            with pf.session(user_id="u1", query="q") as s:
                s.complete(overall_confidence=2.0)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        session = pf.get_session(s.session_id)
    assert session.status == res.SESSION_STATUS_ERROR
    assert session.error_message.startswith(
        "TrackerError: CompleteSession failed: INVALID_ARGUMENT"
    )
