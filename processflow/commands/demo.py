"""``processflow demo``: record realistic pipeline runs through the API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from processflow import demo
from processflow.client import TrackerError
from processflow.client.settings import ClientSettings, report_failure
from processflow.settings import add_arguments, load


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="record realistic demo sessions through the API",
        description="Send realistic pipeline runs (steps, sub-steps, LLM calls, "
        "failed SQL executions, error sessions; several users; start times over "
        "the past week) to a running server, among them the original system's "
        "sample session, and print a summary.",
    )
    parser.add_argument(
        "--sessions", type=int, default=20, help="number of runs to record (default 20)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed, for repeatable content"
    )
    add_arguments(parser, ClientSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(ClientSettings, args)
    if args.sessions < 1:
        print("processflow demo: --sessions must be at least 1", file=sys.stderr)
        return 2
    with settings.tracker() as pf:
        try:
            summary = demo.run_demo(pf.call, args.sessions, args.seed)
        except TrackerError as error:
            return report_failure("demo", settings.target, error)
    print(
        f"recorded {summary.sessions} sessions "
        f"({summary.sent_by_ingest} by Ingest, {summary.sent_by_calls} call by call), "
        f"{summary.steps} steps, {summary.llm_calls} LLM calls, "
        f"{summary.tokens:,} tokens, ${summary.cost_usd:.4f}"
    )
    print(
        f"{summary.error_sessions} ended in error "
        f"({summary.failed_sql} failed SQL executions)"
    )
    print(f"sample session: {summary.sample_session_id}")
    print(f"  processflow show {summary.sample_session_id} --target {settings.target}")
    return 0
