"""Random operation sequences on sessions, then the relay catches up: the
legacy view always agrees with ProcessFlow's own (SQLite, relay.run_once)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from outbox_relay import derive
from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from outbox_relay.verify import verify
from processflow.catalog import CATALOG
from processflow.db import create_engine
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.errors import ProcessFlowError
from server.store import Store
from tests.support.databases import SqliteDatabases

SESSIONS = ("s-1", "s-2")
STEP_IDS = ("a", "b", "c")
CODES = [*sorted(CATALOG), "custom-code"]
STEP_STATUSES = [v for v in res.StepStatus.values() if v]
FINAL = [
    res.SESSION_STATUS_COMPLETED,
    res.SESSION_STATUS_ERROR,
    res.SESSION_STATUS_CANCELLED,
]

sessions = st.sampled_from(SESSIONS)
start = st.builds(
    lambda s, q, i: ("start_session", pb.StartSessionRequest(
        session_id=s, user_id="u", query="q?", query_type=q, intent=i
    )),
    sessions, st.sampled_from(["", "enhanced", "basic"]), st.sampled_from(["", "agg"]),
)  # fmt: skip
step = st.builds(
    lambda s, i, c, status, conf, tokens: ("record_step", pb.RecordStepRequest(
        session_id=s, step_id=i, step_type=c, status=status, confidence=conf,
        tokens_used=tokens, output_data="out",
    )),
    sessions, st.sampled_from(STEP_IDS), st.sampled_from(CODES),
    st.sampled_from(STEP_STATUSES), st.floats(0, 1), st.integers(0, 5000),
)  # fmt: skip
llm = st.builds(
    lambda s, n, inp, out, cost, model, ok: ("record_llm_call", pb.RecordLlmCallRequest(
        session_id=s, call_id=f"{s}-call-{n}", model=model, provider="openai",
        input_tokens=inp, output_tokens=out, cost_usd=cost, success=ok,
        duration_ms=10,
    )),
    sessions, st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 10_000),
    st.floats(0, 5), st.sampled_from(["", "gpt-4o", "small"]), st.booleans(),
)  # fmt: skip
logs = st.builds(
    lambda s, n: ("append_logs", pb.AppendLogsRequest(
        session_id=s, logs=[pb.LogInput(message=f"line {i}") for i in range(n)]
    )),
    sessions, st.integers(1, 3),
)  # fmt: skip
complete = st.builds(
    lambda s, status, sql: ("complete_session", pb.CompleteSessionRequest(
        session_id=s, status=status, generated_sql=sql
    )),
    sessions, st.sampled_from(FINAL), st.sampled_from(["", "SELECT 1"]),
)  # fmt: skip
operations = st.lists(
    st.one_of(start, step, llm, logs, complete), min_size=1, max_size=25
)

_TEMPLATE: list[SqliteDatabases] = []


def _database(directory: Path) -> str:
    if not _TEMPLATE:
        _TEMPLATE.append(SqliteDatabases(Path(tempfile.mkdtemp(prefix="pf-prop-"))))
    return _TEMPLATE[0].new(directory)


def _settle(relay: Relay) -> None:
    for _ in range(1000):
        if relay.run_once() == 0:
            return
    raise AssertionError("the relay never caught up")


# Facts recorded after an event the relay applied once (here the completion
# and its roll-up) must not change what verify expects of it.
LLM_CALL_AFTER_COMPLETION = [
    ("start_session", pb.StartSessionRequest(
        session_id="s-1", user_id="u", query="q?"
    )),
    ("complete_session", pb.CompleteSessionRequest(
        session_id="s-1", status=res.SESSION_STATUS_COMPLETED
    )),
    ("record_llm_call", pb.RecordLlmCallRequest(
        session_id="s-1", call_id="s-1-call-0", input_tokens=3
    )),
]  # fmt: skip


@given(plan=operations, interleave=st.booleans())
@example(plan=LLM_CALL_AFTER_COMPLETION, interleave=False)
def test_views_agree_once_the_relay_catches_up(
    plan: list[tuple[str, Any]], interleave: bool
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = _database(Path(directory))
        store = Store(create_engine(url))
        relay = Relay(RelaySettings(database_url=url, max_attempts=1))
        try:
            for index, (method, request) in enumerate(plan):
                # A refused call leaves nothing, in either view.
                with contextlib.suppress(ProcessFlowError):
                    getattr(store, method)("", request)
                if interleave and index % 3 == 2:
                    _settle(relay)
            _settle(relay)
            engine = create_engine(url)
            try:
                report = verify(engine, engine, derive.SessionFilter())
                with engine.connect() as connection:
                    parked = connection.exec_driver_sql(
                        "SELECT count(*) FROM process_flow_outbox "
                        "WHERE status != 'applied'"
                    ).scalar_one()
            finally:
                engine.dispose()
            assert parked == 0
            assert report.covered, report.as_dict()
        finally:
            relay.close()
            store.close()
