"""``processflow migrate``: bring the databases to the newest schema."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from processflow import log as logsetup
from processflow import migrate
from processflow.settings import DEFAULT_SQLITE_URL, add_arguments, load, option

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrateSettings:
    database_url: str = option(
        DEFAULT_SQLITE_URL, "SQLAlchemy URL of the ProcessFlow database.", secret=True
    )
    legacy_database_url: str | None = option(
        None,
        "URL of the database holding the legacy tables; the main database when unset.",
        secret=True,
    )
    log_format: str = option("text", "Log line format: text or json.")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="apply database migrations (safe to run again)",
        description="Create or upgrade the ProcessFlow tables, the outbox, the views "
        "and, where absent, the legacy tables. Running it again changes nothing.",
    )
    add_arguments(parser, MigrateSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(MigrateSettings, args)
    logsetup.configure(settings.log_format)
    try:
        migrate.upgrade(settings.database_url, settings.legacy_database_url)
    except sa.exc.OperationalError as error:
        print(
            f"processflow migrate: cannot reach the database: {error.orig}",
            file=sys.stderr,
        )
        return 2
    print(f"database is at revision {migrate.head_revision()}")
    return 0
