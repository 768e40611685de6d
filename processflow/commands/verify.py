"""``processflow verify``: reconcile the legacy tables with ProcessFlow's own.

Exit codes: 0 every fact is covered, 1 differences remain (in flight, parked
or gaps), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, TextIO

import sqlalchemy as sa

from outbox_relay import derive
from outbox_relay.verify import CoverageReport, verify
from processflow.commands._coverage_args import (
    CoverageSettings,
    DatabaseUnready,
    add_scope_arguments,
    load_settings,
    open_databases,
    parse_time,
)
from processflow.settings import SettingsError, add_arguments

logger = logging.getLogger(__name__)


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
    settings = load_settings(args)
    if args.wait < 0:
        raise SettingsError(f"--wait: must not be negative, got {args.wait}")
    if settings.page_size < 1:
        raise SettingsError("--page-size: must be 1 or more")
    scope = derive.SessionFilter(
        since=parse_time("--since", args.since), session_id=args.session
    )
    try:
        with open_databases(settings) as (main, legacy):
            report = verify_until(main, legacy, scope, args.wait, settings.page_size)
    except DatabaseUnready as error:
        print(f"processflow verify: {error}", file=sys.stderr)
        return 2
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
