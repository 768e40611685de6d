"""The real processes end to end: ``serve`` and ``relay`` (JSON logs, metrics
endpoints) on PostgreSQL with the legacy tables in a second database;
WaitForCoverage against a running and a stopped relay; ``verify`` and
``backfill`` from the command line with their exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from outbox_relay import legacy_schema as ls
from processflow import migrate
from processflow.db import create_engine
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from tests.support.databases import PostgresDatabases
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, processflow_command, start_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROCESSFLOW_")}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*processflow_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


def session_operations(session_id: str) -> list[pb.IngestOperation]:
    return [
        pb.IngestOperation(
            start_session=pb.StartSessionRequest(
                session_id=session_id, user_id="u1", query="how many?", intent="count"
            )
        ),
        pb.IngestOperation(
            record_step=pb.RecordStepRequest(
                session_id=session_id,
                step_id="pb",
                step_type="prompt-building",
                status=res.STEP_STATUS_COMPLETED,
                output_data="the prompt",
            )
        ),
        pb.IngestOperation(
            record_llm_call=pb.RecordLlmCallRequest(
                session_id=session_id,
                call_id=f"{session_id}-c",
                model="gpt-4o",
                input_tokens=50,
                output_tokens=10,
                cost_usd=0.0005,
            )
        ),
        pb.IngestOperation(
            complete_session=pb.CompleteSessionRequest(
                session_id=session_id, status=res.SESSION_STATUS_COMPLETED
            )
        ),
    ]


class RelayProcess:
    def __init__(
        self, main: str, legacy: str, directory: Path, metrics_port: int
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "relay-stderr.txt"
        with open(self.log, "ab") as err:
            self.process = subprocess.Popen(
                [
                    *processflow_command(),
                    "relay",
                    "--database-url",
                    main,
                    "--legacy-database-url",
                    legacy,
                    "--poll-interval-seconds",
                    "0.1",
                    "--log-format",
                    "json",
                    "--metrics-listen",
                    f"127.0.0.1:{metrics_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=clean_env(),
            )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def databases(postgres_databases: PostgresDatabases | str) -> Iterator[tuple[str, str]]:
    if isinstance(postgres_databases, str):
        pytest.fail(f"PostgreSQL unavailable: {postgres_databases}")
    main = postgres_databases.new(migrated=False)
    legacy = postgres_databases.new(migrated=False)
    migrate.upgrade(main, legacy)
    yield main, legacy
    postgres_databases.drop(main)
    postgres_databases.drop(legacy)


def metric(port: int, name: str) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5
    ) as answer:
        text: str = answer.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def json_events(text: str) -> set[str]:
    events = set()
    for line in text.splitlines():
        if line.startswith("{"):
            events.add(json.loads(line).get("event", ""))
    return events


def test_verify_backfill_and_wait_for_coverage_end_to_end(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    main, legacy = databases
    urls = ["--database-url", main, "--legacy-database-url", legacy]
    server_metrics, relay_metrics = free_port(), free_port()
    server: ServerProcess = start_server(
        main,
        tmp_path / "server",
        args=[
            "--log-format",
            "json",
            "--metrics-listen",
            f"127.0.0.1:{server_metrics}",
        ],
    )
    relay: RelayProcess | None = None
    try:
        stub = pb_grpc.ProcessFlowServiceStub(server.channel())
        operations = [
            op for i in range(20) for op in session_operations(f"e2e-{i:02d}")
        ]
        stub.Ingest(pb.IngestRequest(operations=operations), timeout=30)
        assert "processflow_outbox_backlog 80.0" in metric(
            server_metrics, "processflow_outbox"
        )

        waiting = cli("verify", *urls, "--json")
        assert waiting.returncode == 1, waiting.stderr
        report = json.loads(waiting.stdout)
        assert report["gaps"] == 0 and report["in_flight"] == 20 * 4 + 1

        relay = RelayProcess(main, legacy, tmp_path, relay_metrics)
        started = time.monotonic()
        covered = stub.WaitForCoverage(
            pb.WaitForCoverageRequest(session_id="e2e-19"), timeout=30
        )
        assert covered.coverage.status == res.COVERAGE_STATUS_COVERED
        assert time.monotonic() - started < 15
        done = cli("verify", *urls, "--wait", "30")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "covered" in done.stdout.splitlines()[-1]
        assert 'outcome="applied"' in metric(
            relay_metrics, "processflow_relay_events_total"
        )
        assert 'method="Ingest"' in metric(
            server_metrics, "processflow_rpc_requests_total"
        )
        wait_for(
            lambda: (
                "processflow_outbox_backlog 0.0"
                in metric(server_metrics, "processflow_outbox_backlog")
            ),
            timeout=10,
        )

        # The relay stops: a new session stays pending and the wait ends
        # cleanly at its deadline.
        assert relay.stop() == 0
        stub.Ingest(pb.IngestRequest(operations=session_operations("late")), timeout=30)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.WaitForCoverage(
                pb.WaitForCoverageRequest(session_id="late"), timeout=1
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert time.monotonic() - started < 5

        # A legacy row goes missing: a gap, named, next to the in-flight session.
        engine = create_engine(legacy)
        with engine.begin() as connection:
            connection.execute(
                ls.llm_usage_logs.delete().where(
                    ls.llm_usage_logs.c.RequestId == "e2e-03-c"
                )
            )
        engine.dispose()
        gap = cli("verify", *urls)
        assert gap.returncode == 1
        assert "LLMUsageLogs missing: e2e-03-c (gap)" in gap.stdout
        assert "LLMUsageLogs missing: late-c (in flight)" in gap.stdout

        filled = cli("backfill", *urls, "--progress-file", str(tmp_path / "p.json"))
        assert filled.returncode == 0, filled.stderr
        assert "LLMUsageLogs: 1 inserted" in filled.stdout
        assert "1 session(s) left to the relay" in filled.stdout
        # The session's own rows are back; its usage key is shared with the
        # late session, whose call is still in flight.
        one = cli("verify", *urls, "--session", "e2e-03", "--json")
        assert one.returncode == 1, one.stdout
        single = json.loads(one.stdout)
        assert single["sessions_checked"] == 1
        assert single["gaps"] == 0
        assert single["tables"]["LLMUsageLogs"]["present"] == 1
        assert single["tables"]["TokenUsageAnalytics"]["in_flight"] == 1

        relay = RelayProcess(main, legacy, tmp_path, free_port())
        final = cli("verify", *urls, "--wait", "30")
        assert final.returncode == 0, final.stdout
        assert relay.stop() == 0
    finally:
        if relay is not None:
            relay.stop()
        assert server.terminate() == 0
    assert {"rpc_finished", "server_started"} <= json_events(server.stderr)
    assert "outbox_batch_applied" in json_events(relay.log.read_text())


def test_usage_and_connection_errors_exit_2(tmp_path: Path) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    down = cli("verify", "--database-url", unreachable)
    assert down.returncode == 2
    assert "cannot reach the database" in down.stderr
    bad_since = cli(
        "verify", "--database-url", f"sqlite:///{tmp_path}/x.db", "--since", "soon"
    )
    assert bad_since.returncode == 2
    assert "--since" in bad_since.stderr
    bad_sink = cli(
        "backfill", "--database-url", f"sqlite:///{tmp_path}/x.db", "--sink", "Nope"
    )
    assert bad_sink.returncode == 2
    assert "--sink" in bad_sink.stderr
    unmigrated = cli("verify", "--database-url", f"sqlite:///{tmp_path}/empty.db")
    assert unmigrated.returncode == 2
    assert "processflow migrate" in unmigrated.stderr
    # The command line reads PROCESSFLOW_ variables too.
    env_run = subprocess.run(
        [*processflow_command(), "verify"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env(), "PROCESSFLOW_DATABASE_URL": unreachable},
        check=False,
    )
    assert env_run.returncode == 2
    assert sa is not None
