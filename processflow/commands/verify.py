"""``processflow verify``: reconcile the legacy tables with ProcessFlow's own.

Exit codes: 0 every fact is covered, 1 differences remain (in flight, parked
or gaps), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa

from outbox_relay import derive
from outbox_relay import legacy_schema as ls
from outbox_relay.verify import CoverageReport, verify
from processflow import log as logsetup
from processflow.db import create_engine, utcnow
from processflow.settings import (
    DEFAULT_SQLITE_URL,
    SettingsError,
    add_arguments,
    load,
    option,
)

logger = logging.getLogger(__name__)

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


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="reconcile the legacy tables with ProcessFlow's (exit 1 on any gap)",
        description="Compare every legacy row with the value the relay's rules give "
        "for the latest state of its session, per legacy table; say what is missing, "
        "different or extra, and whether it is still in flight, parked or a gap.",
    )
    add_scope_arguments(parser)
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="check again until covered or SECONDS have passed (in-flight events "
        "settle as the relay catches up)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_arguments(parser, CoverageSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(CoverageSettings, args)
    logsetup.configure(settings.log_format, settings.log_level)
    if args.wait < 0:
        raise SettingsError(f"--wait: must not be negative, got {args.wait}")
    if settings.page_size < 1:
        raise SettingsError("--page-size: must be 1 or more")
    scope = derive.SessionFilter(
        since=parse_time("--since", args.since), session_id=args.session
    )
    main = create_engine(settings.database_url)
    legacy = (
        create_engine(settings.legacy_database_url)
        if settings.legacy_database_url
        else main
    )
    try:
        absent = missing_tables(main, legacy)
        if absent:
            print(
                f"processflow verify: table {absent[0]} is missing; "
                "run processflow migrate",
                file=sys.stderr,
            )
            return 2
        report = verify_until(main, legacy, scope, args.wait, settings.page_size)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        print(
            f"processflow verify: cannot reach the database: {error.orig}",
            file=sys.stderr,
        )
        return 2
    except sa.exc.ProgrammingError as error:
        print(
            f"processflow verify: the database is not migrated ({error.orig}); "
            "run processflow migrate",
            file=sys.stderr,
        )
        return 2
    finally:
        main.dispose()
        legacy.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        render(report, sys.stdout)
    return 0 if report.covered else 1


def verify_until(
    main: sa.Engine,
    legacy: sa.Engine,
    scope: derive.SessionFilter,
    wait_seconds: float,
    page_size: int,
) -> CoverageReport:
    deadline = time.monotonic() + wait_seconds
    while True:
        report = verify(main, legacy, scope, page_size=page_size)
        remaining = deadline - time.monotonic()
        if report.covered or remaining <= 0:
            return report
        logger.info(
            "not covered yet: %d in flight, %d parked, %d gaps; checking again",
            report.total("in_flight"),
            report.total("parked"),
            report.total("gaps"),
            extra={"event": "verify_waiting"},
        )
        time.sleep(min(1.0, remaining))


COLUMNS = (
    "expected",
    "present",
    "missing",
    "different",
    "extra",
    "in_flight",
    "parked",
)


def render(report: CoverageReport, out: TextIO) -> None:
    headers = ("table", *COLUMNS, "gaps")
    rows = [
        (name, *(str(getattr(t, c)) for c in COLUMNS), str(t.gaps))
        for name, t in report.tables.items()
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells), file=out)
    for name, table in report.tables.items():
        for sample in table.samples:
            columns = (
                f" [{', '.join(sample['columns'])}]" if "columns" in sample else ""
            )
            session = sample.get("session_id", "")
            if session and session not in sample["key"]:
                columns += f" of session {session}"
            status = sample["status"].replace("_", " ")
            print(
                f"  {name} {sample['kind']}: {sample['key']}{columns} ({status})",
                file=out,
            )
        if table.sink_off:
            print(
                f"  {name}: {table.sink_off} difference(s) from a switched-off sink; "
                "processflow backfill --sink " + name + " writes them",
                file=out,
            )
    verdict = (
        "covered"
        if report.covered
        else f"NOT covered: {report.total('gaps')} gap(s), "
        f"{report.total('in_flight')} in flight, {report.total('parked')} parked"
    )
    elapsed = f"{report.elapsed_seconds:.1f}s"
    print(f"{report.sessions} session(s) checked in {elapsed}: {verdict}", file=out)
