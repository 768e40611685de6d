"""examples/node: the Node.js client (@grpc/grpc-js loading ../../protos)
records a whole session against a real server and reads it back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from processflow.client import Tracker
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import resources_pb2 as res
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.node


def node() -> str:
    found = shutil.which("node")
    if found is None:
        if IN_CI:
            pytest.fail("node is required in CI", pytrace=False)
        pytest.skip("node is not installed")
    return found


def test_node_example_records_and_reads_back_a_session(
    sqlite_url: str, tmp_path: Path
) -> None:
    node_binary = node()
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install the example's packages"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            check=True,
            capture_output=True,
            timeout=300,
        )

    with running_server(sqlite_url, tmp_path / "server") as server:
        run = subprocess.run(
            [node_binary, "record-session.js", server.address],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        first = run.stdout.splitlines()[0]
        assert first.endswith(": SESSION_STATUS_COMPLETED"), run.stdout
        session_id = first.split()[1].rstrip(":")
        assert "4 steps, 1 LLM call(s)" in run.stdout
        assert "tokens 1430, cost $0.008950" in run.stdout

        with Tracker(server.address) as pf:
            session = pf.get_session(session_id)
            listed = pf.call(
                "ListSessions",
                api.ListSessionsRequest(user_id="node.example@company.com"),
            )
        failed = subprocess.run(
            [node_binary, "record-session.js", "127.0.0.1:1"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PROCESSFLOW_TARGET": "ignored-when-argv-is-given"},
        )

    assert [s.session_id for s in listed.sessions] == [session_id]
    assert session.status == res.SESSION_STATUS_COMPLETED
    (building,) = [s for s in session.steps if s.step_type == "prompt-building"]
    (gathering,) = building.children
    assert gathering.parent_step_id == building.step_id
    assert [g.message for g in gathering.logs] == ["found 2 tables"]
    (call,) = session.llm_calls
    assert (call.provider, call.model, call.total_tokens) == ("openai", "gpt-4o", 1430)
    assert failed.returncode == 1
    assert "record-session: StartSession failed: UNAVAILABLE" in failed.stderr
