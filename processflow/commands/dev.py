"""``processflow dev``: everything in one process on a local SQLite file.

Migrates the database, starts the gRPC server on 127.0.0.1:50051 and, when
the relay is installed, runs it in a thread woken by every commit. Shutdown
goes in phases: the server stops taking calls and drains, then the relay
finishes its batch, then the databases are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import logging
import sys
import threading
from types import ModuleType
from typing import Any

from processflow import log as logsetup
from processflow.commands.serve import migrate_databases
from processflow.settings import add_arguments, load
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

PYTHON_SNIPPET = """\
  .venv/bin/python - <<'PY'
  import grpc
  from processflow.v1 import processflow_service_pb2 as pb
  from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
  stub = pb_grpc.ProcessFlowServiceStub(grpc.insecure_channel("{address}"))
  request = pb.StartSessionRequest(user_id="me", query="How many orders?")
  session_id = stub.StartSession(request).session.session_id
  print(stub.GetSession(pb.GetSessionRequest(session_id=session_id)))
  PY"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run server and relay in one process on a local SQLite file",
        description="Development mode: migrate the database (SQLite file "
        "processflow.db in the working directory unless --database-url says "
        "otherwise), serve the API on 127.0.0.1:50051 and run the outbox relay in "
        "the same process. Takes the options of `serve`.",
    )
    add_arguments(parser, ServerSettings)
    parser.set_defaults(func=run)


def load_relay_module() -> ModuleType | None:
    try:
        return importlib.import_module("outbox_relay.relay")
    except ModuleNotFoundError as error:
        if error.name == "outbox_relay.relay":
            return None
        raise


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


UNAUTHENTICATED_BANNER = """\
WARNING: authentication is OFF. Anyone who can reach {listen} can read and
WARNING: write every session. This is only allowed on a loopback address;
WARNING: give --api-keys-file to listen anywhere else."""


def run(args: argparse.Namespace) -> int:
    settings = load(ServerSettings, args, auto_migrate=True)
    logsetup.configure(settings.log_format, settings.log_level)
    if not settings.api_keys_file:
        if not is_loopback(settings.listen):
            print(
                f"processflow dev: --listen {settings.listen} is not a loopback "
                "address; without --api-keys-file dev listens only on 127.0.0.1, "
                "::1 or localhost",
                file=sys.stderr,
            )
            return 2
        print(UNAUTHENTICATED_BANNER.format(listen=settings.listen), file=sys.stderr)
        logger.warning(
            "authentication is off (loopback only)",
            extra={"event": "dev_auth_off", "listen": settings.listen},
        )
    if not migrate_databases(settings, "dev"):
        return 2
    return asyncio.run(serve_with_relay(settings))


def _greeting(address: str, relay_running: bool, database_url: str) -> str:
    from processflow.settings import mask_url

    relay = "running in this process" if relay_running else "not installed"
    grpcurl = (
        '  grpcurl -plaintext -d \'{"user_id":"me","query":"How many orders?"}\' '
        f"{address} processflow.v1.ProcessFlowService/StartSession"
    )
    return "\n".join(
        [
            f"ProcessFlow listening on {address}",
            f"database: {mask_url(database_url)} (migrated); relay: {relay}",
            "Try it with grpcurl (reflection is on):",
            grpcurl,
            "or from Python:",
            PYTHON_SNIPPET.format(address=address),
            "Press Ctrl+C to stop.",
        ]
    )


async def serve_with_relay(settings: ServerSettings) -> int:
    from server.app import Application

    try:
        app = Application(settings)
    except ValueError as error:
        print(f"processflow dev: {error}", file=sys.stderr)
        return 2

    relay_module = load_relay_module()
    relay: Any = None
    relay_stop = threading.Event()
    relay_thread: threading.Thread | None = None
    if relay_module is not None:
        from outbox_relay.settings import RelaySettings

        relay = relay_module.Relay(
            RelaySettings(
                database_url=settings.database_url,
                legacy_database_url=settings.legacy_database_url,
            )
        )
        app.store.add_commit_listener(lambda _ids: relay.wake())
        relay_thread = threading.Thread(
            target=relay.run, args=(relay_stop,), name="processflow-relay"
        )

    try:
        await app.start()
    except (RuntimeError, OSError) as error:
        print(f"processflow dev: {error}", file=sys.stderr)
        app.close()
        return 2
    if relay_thread is not None:
        relay_thread.start()
    print(
        _greeting(app.address, relay_thread is not None, settings.database_url),
        flush=True,
    )

    await app.wait_for_signal()
    await app.drain()
    if relay_thread is not None:
        relay_stop.set()
        await asyncio.to_thread(relay_thread.join)
        relay.close()
    app.close()
    return 0
