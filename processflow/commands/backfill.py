"""``processflow backfill``: write the legacy rows verify finds missing or
different, re-derived from the ProcessFlow tables. Safe to run again; an
interrupted run continues where it stopped.

Exit codes: 0 done, 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from outbox_relay import derive
from outbox_relay.backfill import BackfillResult, ProgressFile, backfill, validate_sinks
from outbox_relay.settings import SINKS
from processflow.commands._coverage_args import (
    CoverageSettings,
    DatabaseUnready,
    add_scope_arguments,
    load_settings,
    open_databases,
    parse_time,
)
from processflow.db import normalize_url
from processflow.settings import SettingsError, add_arguments

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="write the legacy rows that are missing (truncated tables, sinks "
        "switched off, history before the service)",
        description="Re-derive the legacy rows from the ProcessFlow tables with the "
        "relay's rules and write those that are missing or different. Running it "
        "twice changes nothing; sessions with events still in the outbox are left "
        "to the relay.",
    )
    add_scope_arguments(parser)
    parser.add_argument(
        "--until", metavar="T", help="only sessions started before T (ISO 8601 or 24h)"
    )
    parser.add_argument(
        "--sink",
        metavar="NAME",
        action="append",
        default=[],
        help="only this legacy table (repeatable): " + ", ".join(SINKS),
    )
    parser.add_argument(
        "--progress-file",
        metavar="PATH",
        default=".processflow-backfill.json",
        help="where progress is kept so that a restart continues "
        "(default: .processflow-backfill.json; removed when done)",
    )
    add_arguments(parser, CoverageSettings)
    parser.set_defaults(func=run)


class ProgressLine:
    """A ``\\r`` line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.last_log = time.monotonic()

    def __call__(self, phase: str, done: int, result: BackfillResult) -> None:
        share = f"/{self.total}" if phase == "sessions" and self.total else ""
        text = f"backfill: {phase} {done}{share}, rows written {result.written}"
        if self.tty:
            self.out.write("\r" + text)
            self.out.flush()
        elif time.monotonic() - self.last_log >= LOG_EVERY_SECONDS:
            self.last_log = time.monotonic()
            logger.info(
                "backfill progress: %s %d%s, %d rows written",
                phase,
                done,
                share,
                result.written,
                extra={"event": "backfill_progress"},
            )

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")


def count_sessions(engine: sa.Engine, scope: derive.SessionFilter) -> int:
    query = scope.apply(sa.select(sa.func.count()).select_from(derive.S))
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        sinks = validate_sinks(args.sink)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    if settings.page_size < 1:
        raise SettingsError("--page-size: must be 1 or more")
    scope = derive.SessionFilter(
        since=parse_time("--since", args.since),
        until=parse_time("--until", args.until),
        session_id=args.session,
    )
    fingerprint = hashlib.sha256(
        repr(
            (
                normalize_url(settings.database_url),
                normalize_url(settings.effective_legacy_database_url),
                scope,
                sorted(sinks),
            )
        ).encode()
    ).hexdigest()
    progress = ProgressFile(
        Path(args.progress_file) if args.progress_file else None, fingerprint
    )
    try:
        with open_databases(settings) as (main, legacy):
            line = ProgressLine(count_sessions(main, scope), sys.stderr)
            result = backfill(
                main,
                legacy,
                scope,
                sinks,
                page_size=settings.page_size,
                progress=progress,
                report=line,
            )
            line.finish()
    except DatabaseUnready as error:
        print(f"processflow backfill: {error}", file=sys.stderr)
        return 2
    logger.info(
        "backfill finished: %d rows written",
        result.written,
        extra={"event": "backfill_finished", "sessions": result.sessions},
    )
    print(render(result))
    return 0


def render(result: BackfillResult) -> str:
    lines = [f"{result.sessions} session(s) read"]
    for table in SINKS:
        inserted, updated = result.inserted[table], result.updated[table]
        lines.append(f"  {table}: {inserted} inserted, {updated} corrected")
    if result.left_to_relay:
        lines.append(
            f"  {result.left_to_relay} session(s) left to the relay "
            "(events pending or parked)"
        )
    if result.extras_left:
        lines.append(
            f"  {result.extras_left} legacy row(s) without a ProcessFlow source left "
            "as they are (see processflow verify)"
        )
    return "\n".join(lines)
