"""The ``processflow`` command: one entry point, one sub-command per module
in processflow/commands/.

Each command module exposes ``register(subparsers)``, which adds its parser
and sets ``func`` to a callable taking the parsed arguments and returning the
exit code. Exit codes: 0 success, 1 the command's own failure (for example
``verify`` found gaps), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from processflow import __version__
from processflow.settings import SettingsError

# Command modules, in the order --help lists them.
COMMANDS = (
    "dev",
    "serve",
    "relay",
    "migrate",
    "health",
    "dead_letters",
    "verify",
    "backfill",
    "show",
    "watch",
    "demo",
    "keys",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processflow",
        description="Record LLM pipeline runs; keep the legacy reports in step.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"processflow.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"processflow.commands.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except SettingsError as error:
        print(f"processflow {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
