"""``processflow show SESSION``: one session as a tree, or as JSON."""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

import grpc
from google.protobuf import json_format

from processflow import render
from processflow.client import TrackerError
from processflow.client.settings import ClientSettings, report_failure
from processflow.settings import add_arguments, load
from processflow.v1 import processflow_service_pb2 as api


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "show",
        help="print one session as a tree",
        description="Print a session with its steps, LLM calls, errors and legacy "
        "coverage. Exit 1 when the session is unknown, 2 when the server cannot "
        "be reached.",
    )
    parser.add_argument("session_id", metavar="SESSION", help="id of the session")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the GetSession response as JSON instead of a tree",
    )
    parser.add_argument(
        "--all-logs",
        action="store_true",
        help="show every log line (by default only warnings and errors)",
    )
    add_arguments(parser, ClientSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(ClientSettings, args)
    with settings.tracker() as pf:
        try:
            response = pf.call(
                "GetSession", api.GetSessionRequest(session_id=args.session_id)
            )
        except TrackerError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                print(
                    f"processflow show: no session {args.session_id!r}",
                    file=sys.stderr,
                )
                return 1
            return report_failure("show", settings.target, error)
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    lines = render.render_session(
        response.session,
        width=shutil.get_terminal_size().columns,
        glyphs=render.glyphs_for(sys.stdout.encoding),
        all_logs=args.all_logs,
    )
    print("\n".join(lines))
    return 0
