"""Real servers for tests: a ``processflow serve`` subprocess on a free port,
and an in-process server on a background event loop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server.app import Application
from server.settings import ServerSettings
from tests.support.polling import wait_for

LISTENING = re.compile(r"ProcessFlow listening on (\S+)")
ROOT = Path(__file__).resolve().parents[2]


def health_status(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The server's health status name, or the gRPC code name when the call fails."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    directory: Path
    database_url: str
    address: str = ""
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return (self.directory / "stdout.txt").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.directory / "stderr.txt").read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def stub(self) -> pb_grpc.ProcessFlowServiceStub:
        return pb_grpc.ProcessFlowServiceStub(self.channel())

    def wait_serving(self, timeout: float = 30.0) -> None:
        wait_for(
            lambda: health_status(self.address) == "SERVING",
            timeout=timeout,
            interval=0.1,
            message=f"health SERVING at {self.address}\n{self.stderr[-3000:]}",
        )

    def terminate(self, timeout: float = 30.0) -> int:
        """Sends SIGTERM and returns the exit code."""
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def processflow_command() -> list[str]:
    return [sys.executable, "-m", "processflow.cli"]


def start_server(
    database_url: str,
    directory: Path,
    *,
    args: Sequence[str] = (),
    wait_serving: bool = True,
    timeout: float = 30.0,
) -> ServerProcess:
    """Starts ``processflow serve`` on a free port and waits until it listens
    (and, unless told otherwise, until health says SERVING)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    with (
        open(directory / "stdout.txt", "wb") as out,
        open(directory / "stderr.txt", "wb") as err,
    ):
        process = subprocess.Popen(
            [
                *processflow_command(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                *args,
            ],
            stdout=out,
            stderr=err,
            cwd=directory,
            env=env,
        )
    server = ServerProcess(process, directory, database_url)

    def listening() -> str | None:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}:\n{server.stderr[-3000:]}"
            )
        match = LISTENING.search(server.stdout)
        return match[1] if match else None

    try:
        server.address = wait_for(
            listening, timeout=timeout, interval=0.05, message="server to listen"
        )
        if wait_serving:
            server.wait_serving(timeout)
    except BaseException:
        server.kill()
        raise
    return server


@contextmanager
def running_server(
    database_url: str, directory: Path, *, args: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    server = start_server(database_url, directory, args=args)
    try:
        yield server
    finally:
        server.kill()


class InProcessServer:
    """The real Application on a background event loop, for tests that need
    the gRPC surface without a subprocess."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app: Application | None = None
        self.address = ""

    def start(self) -> InProcessServer:
        self.thread.start()

        async def start() -> Application:
            app = Application(self.settings)
            await app.start()
            await app.check_health()
            return app

        self.app = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.address = self.app.address
        return self

    def stop(self) -> None:
        app = self.app
        if app is not None:
            asyncio.run_coroutine_threadsafe(app.drain(), self.loop).result(30)
            app.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def in_process_server(
    database_url: str, **settings: object
) -> Iterator[InProcessServer]:
    server = InProcessServer(
        ServerSettings(
            listen="127.0.0.1:0",
            database_url=database_url,
            **settings,  # type: ignore[arg-type]
        )
    ).start()
    try:
        yield server
    finally:
        server.stop()
