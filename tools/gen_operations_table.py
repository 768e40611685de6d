"""Prints the configuration reference of docs/operations.md: one table per
command, read from the ``processflow`` parser itself, so that every flag,
environment variable and default shown is the one the code has.

    .venv/bin/python tools/gen_operations_table.py          # print the tables
    .venv/bin/python tools/gen_operations_table.py --write  # refresh the doc

tests/unit/test_operations_doc.py fails while the doc and the code differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processflow.cli import build_parser  # noqa: E402

DOC = ROOT / "docs" / "operations.md"
BEGIN = "<!-- options:begin (tools/gen_operations_table.py --write) -->"
END = "<!-- options:end -->"

# What processflow.settings.add_arguments appends to a field's help text.
_ENV_SUFFIX = re.compile(r"\s*\[env (?P<env>[A-Z0-9_]+)\]$")
_DEFAULT_SUFFIX = re.compile(
    r"\s*\((?P<list>comma-separated; )?default: (?P<value>.*)\)$"
)


@dataclass(frozen=True)
class Row:
    flag: str
    env: str | None
    default: str
    meaning: str


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    rows: tuple[Row, ...]


def format_default(value: object) -> str:
    """How a default reads in the tables (shared with the doc's test)."""
    if value is None or value in ((), []):
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _row(action: argparse.Action) -> Row | None:
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return None
    if isinstance(action, argparse._SubParsersAction):
        return None
    text = " ".join((action.help or "").split())
    env = None
    match = _ENV_SUFFIX.search(text)
    if match:
        env = match["env"]
        text = text[: match.start()]
    match = _DEFAULT_SUFFIX.search(text) if env else None
    settings_default = None
    if match:
        settings_default = match["value"]
        text = text[: match.start()]
        if match["list"]:
            text += " Comma-separated."
    if action.option_strings:
        flag = " / ".join(s for s in action.option_strings if s.startswith("--"))
        flag = flag or action.option_strings[0]
    else:
        flag = str(action.metavar or action.dest).upper()
    if env is not None:
        default = "unset" if settings_default is None else settings_default
        if default in ("True", "False"):
            default = default.lower()
    elif action.default is argparse.SUPPRESS:
        default = "unset"
    elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        default = format_default(action.default)
    else:
        default = (
            "required"
            if action.required and action.default is None
            else (format_default(action.default))
        )
    text = text.replace("%(default)s", default).replace("%%", "%")
    if action.choices and not isinstance(action.choices, dict):
        text += " One of: " + ", ".join(str(c) for c in action.choices) + "."
    return Row(flag, env, default, text.strip())


def commands() -> list[Command]:
    """Every command and sub-command of ``processflow``, in --help order."""
    found: list[Command] = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        sub = _subparsers(parser)
        if sub is None:
            return
        summaries = {a.dest: a.help or "" for a in sub._choices_actions}
        for name, child in sub.choices.items():
            full = f"{prefix} {name}".strip()
            rows = tuple(r for r in map(_row, child._actions) if r is not None)
            summary = child.description or summaries.get(name, "")
            found.append(Command(full, " ".join(summary.split()), rows))
            walk(child, full)

    walk(build_parser(), "")
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    parts: list[str] = []
    for command in commands():
        parts.append(f"### `processflow {command.name}`\n")
        if command.summary:
            parts.append(f"{_cell(command.summary)}\n")
        if not command.rows:
            parts.append("No options.\n")
            continue
        parts.append("| flag | environment variable | default | meaning |")
        parts.append("|---|---|---|---|")
        for row in command.rows:
            env = f"`{row.env}`" if row.env else "—"
            flag = " / ".join(f"`{f}`" for f in row.flag.split(" / "))
            parts.append(
                f"| {flag} | {env} | `{_cell(row.default)}` | {_cell(row.meaning)} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def embedded(doc_text: str) -> str:
    """The generated part of the doc, between the markers."""
    start = doc_text.index(BEGIN) + len(BEGIN)
    return doc_text[start : doc_text.index(END)].strip("\n") + "\n"


def write(doc: Path = DOC) -> None:
    text = doc.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    doc.write_text(text[:start] + "\n\n" + render() + "\n" + text[text.index(END) :])


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        write()
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
