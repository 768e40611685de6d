"""Verify at scale: write N sessions through the API into a fresh PostgreSQL
database, let the relay apply them all, then time ``processflow verify`` and
measure its peak memory.

    .venv/bin/python -m bench.verify_scale --sessions 100000

Each session is four operations (start, a finished prompt-building step, an
LLM call, completion) sent with Ingest, ``--batch`` sessions per request.
The database is dropped at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from processflow import migrate
from processflow.db import create_engine, normalize_url
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from processflow.v1 import resources_pb2 as res
from server.schema import outbox

LISTENING = re.compile(r"ProcessFlow listening on (\S+)")
COMMAND = [sys.executable, "-m", "processflow.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def operations(session_id: str, user: str) -> list[pb.IngestOperation]:
    return [
        pb.IngestOperation(
            start_session=pb.StartSessionRequest(
                session_id=session_id,
                user_id=user,
                query="how many orders?",
                intent="count",
            )
        ),
        pb.IngestOperation(
            record_step=pb.RecordStepRequest(
                session_id=session_id,
                step_id="pb",
                step_type="prompt-building",
                status=res.STEP_STATUS_COMPLETED,
                output_data="SELECT ...",
                confidence=0.9,
            )
        ),
        pb.IngestOperation(
            record_llm_call=pb.RecordLlmCallRequest(
                session_id=session_id,
                call_id=f"{session_id}-c",
                provider="openai",
                model="gpt-4o",
                prompt_text="prompt",
                response_text="SELECT 1",
                input_tokens=120,
                output_tokens=30,
                cost_usd=0.00042,
                duration_ms=250,
            )
        ),
        pb.IngestOperation(
            complete_session=pb.CompleteSessionRequest(
                session_id=session_id,
                status=res.SESSION_STATUS_COMPLETED,
                generated_sql="SELECT count(*) FROM orders",
                overall_confidence=0.85,
            )
        ),
    ]


def pending_events(engine: sa.Engine) -> int:
    query = sa.select(sa.func.count()).where(outbox.c.status == "pending")
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="sessions per Ingest")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()

    admin = sa.create_engine(
        normalize_url(args.admin_url), isolation_level="AUTOCOMMIT"
    )
    name = f"pf_verify_scale_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(normalize_url(args.admin_url)).set(database=name)
    database_url = url.render_as_string(hide_password=False)
    workdir = Path(tempfile.mkdtemp(prefix="verify-scale-"))
    figures: dict[str, object] = {"sessions": args.sessions, "database": name}
    server = relay = None
    try:
        migrate.upgrade(database_url)
        engine = create_engine(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSFLOW_")}
        out = open(workdir / "server.out", "wb")  # noqa: SIM115 - lives as long as the server
        server = subprocess.Popen(
            [
                *COMMAND,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--log-level",
                "WARNING",
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            match = LISTENING.search((workdir / "server.out").read_text())
            address = match[1] if match else None
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

        began = time.monotonic()
        with grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            for start in range(0, args.sessions, args.batch):
                ops = [
                    op
                    for i in range(start, min(start + args.batch, args.sessions))
                    for op in operations(f"vs-{i:07d}", f"user-{i % args.users}")
                ]
                stub.Ingest(pb.IngestRequest(operations=ops), timeout=600)
        figures["ingest_seconds"] = round(time.monotonic() - began, 1)
        print(
            f"ingested {args.sessions} sessions in {figures['ingest_seconds']}s",
            flush=True,
        )

        began = time.monotonic()
        relay = subprocess.Popen(
            [
                *COMMAND,
                "relay",
                "--database-url",
                database_url,
                "--batch-size",
                "2000",
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        while pending_events(engine):
            time.sleep(1)
        figures["relay_seconds"] = round(time.monotonic() - began, 1)
        relay.send_signal(signal.SIGTERM)
        relay.wait(60)
        print(f"relay applied everything in {figures['relay_seconds']}s", flush=True)

        began = time.monotonic()
        with open(workdir / "verify.err", "wb") as errors:
            child = subprocess.Popen(
                [*COMMAND, "verify", "--database-url", database_url, "--json"],
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
            )
            assert child.stdout is not None
            stdout = child.stdout.read()
            # wait4 gives this child's own rusage (peak RSS in KiB on Linux).
            _pid, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        report = json.loads(stdout)
        figures["verify_seconds"] = round(time.monotonic() - began, 1)
        figures["verify_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
        figures["verify_exit_code"] = child.returncode
        figures["verify_covered"] = report["covered"]
        figures["verify_sessions_checked"] = report["sessions_checked"]
        engine.dispose()
    finally:
        for process in (relay, server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        if not args.keep:
            with admin.connect() as connection:
                connection.exec_driver_sql(
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                )
        admin.dispose()
    print(json.dumps(figures, indent=2))
    return 0 if figures.get("verify_covered") else 1


if __name__ == "__main__":
    sys.exit(main())
