"""``processflow serve``: run the gRPC server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from processflow import log as logsetup
from processflow.runtime import tune_garbage_collector
from processflow.settings import add_arguments, load
from server.settings import ServerSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC server",
        description="Serve the ProcessFlow API. Health reports NOT_SERVING until "
        "the database is reachable and migrated (see --auto-migrate). SIGTERM or "
        "SIGINT drains in-flight calls within --shutdown-grace-seconds, then exits 0.",
    )
    add_arguments(parser, ServerSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(ServerSettings, args)
    logsetup.configure(settings.log_format, settings.log_level)
    if settings.auto_migrate and not migrate_databases(settings, "serve"):
        return 2
    return asyncio.run(serve(settings))


def migrate_databases(settings: ServerSettings, command: str) -> bool:
    # Imported here so that `processflow --help` and `health` stay quick.
    import sqlalchemy as sa

    from processflow import migrate

    try:
        migrate.upgrade(settings.database_url, settings.legacy_database_url)
    except sa.exc.OperationalError as error:
        print(
            f"processflow {command}: cannot migrate, the database is unreachable: "
            f"{error.orig}",
            file=sys.stderr,
        )
        return False
    return True


async def serve(settings: ServerSettings) -> int:
    from server.app import Application

    try:
        app = Application(settings)
        await app.start()
    except (ValueError, RuntimeError, OSError) as error:
        print(f"processflow serve: {error}", file=sys.stderr)
        return 2
    print(f"ProcessFlow listening on {app.address}", flush=True)
    tune_garbage_collector()
    await app.run_until_signal()
    return 0
