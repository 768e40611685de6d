"""The server as a process: many concurrent clients, SIGTERM, health of an
unmigrated database, the health command, and dev mode."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import grpc
import sqlalchemy as sa

from processflow.db import create_engine
from processflow.v1 import events_pb2
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from server import schema
from tests.support.polling import wait_for
from tests.support.server import (
    LISTENING,
    health_status,
    processflow_command,
    start_server,
)

CLIENTS = 50


def run_client(address: str, index: int, errors: list[BaseException]) -> None:
    session_id = f"conc-{index}"
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            stub.StartSession(
                pb.StartSessionRequest(
                    request_id=f"start-{index}",
                    session_id=session_id,
                    user_id=f"user-{index % 5}",
                    query="q",
                ),
                timeout=30,
            )
            stub.RecordStep(
                pb.RecordStepRequest(
                    session_id=session_id,
                    step_id="p",
                    step_type="prompt-building",
                    status=res.STEP_STATUS_COMPLETED,
                    logs=[pb.LogInput(message=f"line {n}") for n in range(3)],
                ),
                timeout=30,
            )
            call = pb.RecordLlmCallRequest(
                request_id=f"call-{index}",
                session_id=session_id,
                call_id=f"call-{index}",
                input_tokens=index,
                cost_usd=0.001,
            )
            stub.RecordLlmCall(call, timeout=30)
            stub.RecordLlmCall(call, timeout=30)  # a retry: no second effect
            stub.CompleteSession(
                pb.CompleteSessionRequest(
                    session_id=session_id, status=res.SESSION_STATUS_COMPLETED
                ),
                timeout=30,
            )
    except BaseException as error:  # collected for the assertion
        errors.append(error)


def test_fifty_concurrent_clients_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    server = start_server(pg_url, tmp_path)
    try:
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=run_client, args=(server.address, i, errors))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
    finally:
        assert server.terminate() == 0

    engine = create_engine(pg_url)
    with engine.connect() as connection:
        sessions = connection.execute(
            sa.select(schema.sessions.c.session_id, schema.sessions.c.event_sequence)
        ).all()
        steps = connection.execute(sa.select(sa.func.count()).select_from(schema.steps))
        logs = connection.execute(sa.select(sa.func.count()).select_from(schema.logs))
        calls = connection.execute(
            sa.select(sa.func.count()).select_from(schema.llm_calls)
        )
        outbox = connection.execute(
            sa.select(
                schema.outbox.c.session_id,
                schema.outbox.c.sequence,
                schema.outbox.c.payload,
            )
        ).all()
        counts = (steps.scalar_one(), logs.scalar_one(), calls.scalar_one())
    engine.dispose()
    assert len(sessions) == CLIENTS
    assert all(sequence == 4 for _, sequence in sessions)
    assert counts == (CLIENTS, CLIENTS * 3, CLIENTS)
    by_session: dict[str, list[tuple[int, str]]] = {}
    for session_id, sequence, payload in outbox:
        kind = events_pb2.OutboxEvent.FromString(payload).WhichOneof("payload")
        by_session.setdefault(session_id, []).append((sequence, str(kind)))
    assert len(by_session) == CLIENTS
    for events in by_session.values():
        assert sorted(events) == [
            (1, "session_started"),
            (2, "step_finished"),
            (3, "llm_call_recorded"),
            (4, "session_completed"),
        ]


def test_sigterm_drains_and_exits_zero(sqlite_url: str, tmp_path: Path) -> None:
    server = start_server(sqlite_url, tmp_path, args=["--shutdown-grace-seconds", "5"])
    stub = server.stub()
    stub.StartSession(
        pb.StartSessionRequest(session_id="drain", user_id="u", query="q"), timeout=10
    )
    stream = stub.WatchSession(pb.WatchSessionRequest(session_id="drain"), timeout=60)
    assert next(stream).change == "snapshot"

    server.process.send_signal(signal.SIGTERM)
    # The open watch ends normally rather than being cut off at the grace limit.
    assert list(stream) == []
    assert server.process.wait(20) == 0
    assert "server_draining" in server.stderr
    assert "server_stopped" in server.stderr


def test_unmigrated_database_is_not_serving(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    server = start_server(url, tmp_path / "plain", wait_serving=False)
    try:
        wait_for(
            lambda: health_status(server.address) == "NOT_SERVING",
            timeout=20,
            message="NOT_SERVING",
        )
        health = subprocess.run(
            [*processflow_command(), "health", "--target", server.address],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (health.returncode, health.stdout.strip()) == (1, "NOT_SERVING")
    finally:
        assert server.terminate() == 0

    migrated = start_server(url, tmp_path / "migrating", args=["--auto-migrate"])
    try:
        health = subprocess.run(
            [
                *processflow_command(),
                "health",
                "--target",
                migrated.address,
                "--service",
                "processflow.v1.ProcessFlowService",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    finally:
        assert migrated.terminate() == 0


def test_health_command_without_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    health = subprocess.run(
        [
            *processflow_command(),
            "health",
            "--target",
            f"127.0.0.1:{port}",
            "--timeout-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert health.returncode == 2
    assert "cannot reach" in health.stderr


def test_dev_serves_and_relays_in_one_process(tmp_path: Path) -> None:
    out = (tmp_path / "out.txt").open("wb")
    err = (tmp_path / "err.txt").open("wb")
    process = subprocess.Popen(
        [*processflow_command(), "dev", "--listen", "127.0.0.1:0"],
        stdout=out,
        stderr=err,
        cwd=tmp_path,
    )
    try:
        address = wait_for(
            lambda: (
                (m := LISTENING.search((tmp_path / "out.txt").read_text())) and m[1]
            ),
            timeout=60,
            message="dev to listen",
        )
        assert (tmp_path / "processflow.db").exists()
        assert "grpcurl" in (tmp_path / "out.txt").read_text()
        wait_for(lambda: health_status(address) == "SERVING", timeout=30)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            session_id = f"dev-{uuid.uuid4().hex[:8]}"
            stub.StartSession(
                pb.StartSessionRequest(session_id=session_id, user_id="u", query="q"),
                timeout=10,
            )
            covered = stub.WaitForCoverage(
                pb.WaitForCoverageRequest(session_id=session_id), timeout=30
            )
            assert covered.coverage.status == res.COVERAGE_STATUS_COVERED
            assert covered.coverage.applied_events == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        out.close()
        err.close()
