"""What ``processflow verify`` and ``processflow backfill`` share: their
database settings, the session scope they take, and the opening of the main
and legacy databases with the errors that make either command exit 2."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from outbox_relay import legacy_schema as ls
from processflow import log as logsetup
from processflow.db import create_engine, utcnow
from processflow.settings import DEFAULT_SQLITE_URL, SettingsError, load, option

_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class CoverageSettings:
    """Database options shared by ``verify`` and ``backfill``."""

    database_url: str = option(
        DEFAULT_SQLITE_URL, "SQLAlchemy URL of the ProcessFlow database.", secret=True
    )
    legacy_database_url: str | None = option(
        None,
        "URL of the database holding the legacy tables; the main database when unset.",
        secret=True,
    )
    page_size: int = option(2000, "Sessions (or calls) read per page.")
    log_format: str = option("text", "Log line format: text or json.")
    log_level: str = option(
        "WARNING", "Lowest level logged: DEBUG, INFO, WARNING, ERROR."
    )

    @property
    def effective_legacy_database_url(self) -> str:
        return self.legacy_database_url or self.database_url


class DatabaseUnready(Exception):
    """A database cannot be reached or is not migrated; the command exits 2."""


def load_settings(args: argparse.Namespace) -> CoverageSettings:
    """The settings, with logging configured from them."""
    settings = load(CoverageSettings, args)
    logsetup.configure(settings.log_format, settings.log_level)
    return settings


def parse_time(flag: str, text: str | None) -> dt.datetime | None:
    """An ISO 8601 time (naive means UTC) or an age such as ``24h`` or ``7d``."""
    if text is None:
        return None
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        return utcnow() - dt.timedelta(**{unit: amount})
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(
            f"{flag}: expected an ISO 8601 time or an age like 24h, got {text!r}"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def missing_tables(main: sa.Engine, legacy: sa.Engine) -> list[str]:
    """Tables verify and backfill read that a database lacks (not migrated)."""
    wanted = [
        (main, ("process_flow_sessions", "process_flow_outbox")),
        (legacy, (*(t.name for t in ls.LEGACY_TABLES), ls.applied_events.name)),
    ]
    absent: list[str] = []
    for engine, names in wanted:
        inspector = sa.inspect(engine)
        absent += [name for name in names if not inspector.has_table(name)]
    return absent


def add_scope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        metavar="T",
        help="only sessions started at or after T (ISO 8601 or 24h)",
    )
    parser.add_argument("--session", metavar="ID", help="only this session")


@contextmanager
def open_databases(
    settings: CoverageSettings,
) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """The main and the legacy engine (the same one when no legacy URL is
    set), disposed of on exit. A missing table, an unreachable or an
    unmigrated database, in the block too, raises ``DatabaseUnready``."""
    main = create_engine(settings.database_url)
    legacy = (
        create_engine(settings.legacy_database_url)
        if settings.legacy_database_url
        else main
    )
    try:
        absent = missing_tables(main, legacy)
        if absent:
            raise DatabaseUnready(
                f"table {absent[0]} is missing; run processflow migrate"
            )
        yield main, legacy
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        raise DatabaseUnready(f"cannot reach the database: {error.orig}") from error
    except sa.exc.ProgrammingError as error:
        raise DatabaseUnready(
            f"the database is not migrated ({error.orig}); run processflow migrate"
        ) from error
    finally:
        main.dispose()
        legacy.dispose()
