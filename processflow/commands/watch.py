"""``processflow watch SESSION``: follow a session live until it ends.

On a terminal the tree is redrawn in place after every change; otherwise
each new state is printed after a separator line, so logs and pipes keep
the whole history.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any, TextIO

import grpc

from processflow import render
from processflow.client import TrackerError
from processflow.client.settings import ClientSettings, report_failure
from processflow.settings import add_arguments, load
from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import resources_pb2 as res

# Cursor home, then "erase line" before each line and "erase below" after the
# last: redraws without the flicker of clearing the whole screen. The last
# line gets no newline, so a screen-high frame does not scroll.
HOME = "\x1b[H"
ERASE_LINE = "\x1b[K"
ERASE_BELOW = "\x1b[J"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="follow one session live until it ends",
        description="Follow a session (WatchSession) and redraw its tree after "
        "every change until the session ends or --timeout-seconds pass. Exit 0 "
        "when the session ended, 1 when it is unknown or the time ran out, 2 "
        "when the server cannot be reached.",
    )
    parser.add_argument("session_id", metavar="SESSION", help="id of the session")
    parser.add_argument(
        "--timeout-seconds",
        type=float,
        default=None,
        help="stop following after this many seconds (default: until it ends)",
    )
    parser.add_argument(
        "--all-logs",
        action="store_true",
        help="show every log line (by default only warnings and errors)",
    )
    add_arguments(parser, ClientSettings)
    parser.set_defaults(func=run)


class Screen:
    """Where states are drawn: redrawn in place on a terminal, appended
    otherwise."""

    def __init__(self, out: TextIO, all_logs: bool) -> None:
        self.out = out
        self.live = out.isatty()
        self.glyphs = render.glyphs_for(out.encoding)
        self.all_logs = all_logs
        self.drawn = False

    def draw(self, response: api.WatchSessionResponse) -> None:
        size = shutil.get_terminal_size()
        lines = render.render_session(
            response.session,
            width=size.columns,
            glyphs=self.glyphs,
            all_logs=self.all_logs,
        )
        footer = f"revision {response.revision}: {response.change or 'update'}"
        if not self.live:
            self.out.write(f"--- {footer} ---\n" + "\n".join(lines) + "\n")
            self.out.flush()
            return
        room = max(size.lines - 1, 3)
        if len(lines) > room:
            hidden = len(lines) - room + 1
            lines = [*lines[: room - 1], f"{self.glyphs.ellipsis} {hidden} more lines"]
        lines.append(render.fit(footer, size.columns, self.glyphs))
        body = "\n".join(ERASE_LINE + line for line in lines)
        self.out.write(HOME + body + ERASE_BELOW)
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        if self.live and self.drawn:
            self.out.write("\n")
            self.out.flush()


def run(args: argparse.Namespace) -> int:
    settings = load(ClientSettings, args)
    if args.timeout_seconds is not None and args.timeout_seconds <= 0:
        print("processflow watch: --timeout-seconds must be positive", file=sys.stderr)
        return 2
    screen = Screen(sys.stdout, args.all_logs)
    last: res.Session | None = None
    with settings.tracker() as pf:
        try:
            for response in pf.watch(args.session_id, args.timeout_seconds):
                last = response.session
                screen.draw(response)
        except TrackerError as error:
            screen.close()
            if error.code == grpc.StatusCode.NOT_FOUND:
                print(
                    f"processflow watch: no session {args.session_id!r}",
                    file=sys.stderr,
                )
                return 1
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and last is not None:
                print(
                    f"processflow watch: stopped after {args.timeout_seconds:g}s; "
                    "the session is still running",
                    file=sys.stderr,
                )
                return 1
            return report_failure("watch", settings.target, error)
    screen.close()
    if last is None or last.status == res.SESSION_STATUS_RUNNING:
        print("processflow watch: the stream ended before the session", file=sys.stderr)
        return 1
    return 0
