"""docs/operations.md documents every option of every command, with its
environment variable and default, and nothing that does not exist.

When this fails after a change to a settings dataclass or a command, refresh
the doc with ``.venv/bin/python tools/gen_operations_table.py --write``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from outbox_relay.settings import RelaySettings
from processflow import cli
from processflow.settings import env_name, flag_name
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
REFRESH = "run .venv/bin/python tools/gen_operations_table.py --write"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_operations_table", ROOT / "tools" / "gen_operations_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _generator()


def documented() -> dict[str, dict[str, tuple[str, str]]]:
    """command -> flag -> (environment variable, default), read from the doc."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] | None = None
    for line in gen.embedded(DOC.read_text()).splitlines():
        heading = re.fullmatch(r"### `processflow (.+)`", line)
        if heading:
            current = tables.setdefault(heading[1], {})
            continue
        if not line.startswith("| `") or current is None:
            continue
        flag, env, default = [c.strip() for c in line.strip("|").split(" | ")][:3]
        for one in re.findall(r"`([^`]+)`", flag):
            current[one] = (env.strip("`"), default.strip("`"))
    return tables


def settings_owners() -> list[tuple[type, list[str]]]:
    """Each settings dataclass with the commands it configures: the command
    modules' own dataclasses and those they import from a settings module."""
    owners: list[tuple[type, list[str]]] = [
        (ServerSettings, ["serve"]),
        (RelaySettings, ["relay"]),
    ]
    for name in cli.COMMANDS:
        try:
            module = importlib.import_module(f"processflow.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"processflow.commands.{name}":
                continue
            raise
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        module.register(subparsers)
        commands = list(subparsers.choices)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and (
                    value.__module__.endswith("settings")
                    or value.__module__.startswith("processflow.commands.")
                )
                and all("help" in f.metadata for f in dataclasses.fields(value))
            ):
                owners.append((value, commands))
    return owners


def test_reference_matches_the_command_line() -> None:
    assert gen.embedded(DOC.read_text()) == gen.render(), REFRESH


@pytest.mark.parametrize(
    ("settings", "commands"),
    settings_owners(),
    ids=lambda value: value.__name__ if isinstance(value, type) else "-".join(value),
)
def test_every_settings_field_is_documented(
    settings: type, commands: list[str]
) -> None:
    tables = documented()
    # A command with sub-commands (dead-letters list, ...) documents its
    # settings in each sub-command's table.
    names = [n for n in tables if n.split(" ")[0] in commands]
    assert names, f"no table for {commands} in {DOC.name}; {REFRESH}"
    for field in dataclasses.fields(settings):
        flag = flag_name(field.name)
        expected = (env_name(field.name), gen.format_default(field.default))
        found = [tables[n].get(flag) for n in names]
        assert expected in found, (
            f"{settings.__name__}.{field.name}: {flag} documented as {found}, "
            f"expected {expected}; {REFRESH}"
        )


def test_doc_lists_no_option_that_does_not_exist() -> None:
    actual = {c.name: c for c in gen.commands()}
    for name, rows in documented().items():
        assert name in actual, (
            f"the doc documents a command that does not exist: {name}"
        )
        flags = {one for row in actual[name].rows for one in row.flag.split(" / ")}
        assert set(rows) <= flags, f"{name}: not options: {sorted(set(rows) - flags)}"
    assert set(actual) <= set(documented()), f"undocumented commands; {REFRESH}"


def test_every_environment_variable_in_the_doc_exists() -> None:
    text = DOC.read_text()
    known = {
        env_name(f.name)
        for settings, _ in settings_owners()
        for f in dataclasses.fields(settings)
    }
    mentioned = set(re.findall(r"\bPROCESSFLOW_[A-Z0-9_]+\b", text))
    assert mentioned <= known, f"no such option: {sorted(mentioned - known)}"


def exported_metric_names() -> set[str]:
    """Every family processflow/metrics.py declares, as Prometheus shows it."""
    import sqlalchemy as sa
    from prometheus_client.metrics import MetricWrapperBase

    from processflow import metrics

    families = [
        family
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    ]
    families += metrics.OutboxCollector(sa.create_engine("sqlite://")).describe()
    return {f.name + ("_total" if f.type == "counter" else "") for f in families}


def test_metrics_table_lists_exactly_the_exported_metrics() -> None:
    section = DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `(processflow_[a-z_]+)` \|", section, re.MULTILINE))
    assert table == exported_metric_names()
    # Alert expressions name only metrics that exist (or their histogram series).
    allowed = table | {
        f"{n}_{part}" for n in table for part in ("bucket", "count", "sum")
    }
    used = set(re.findall(r"\bprocessflow_[a-z_]*[a-z]\b", section))
    assert used <= allowed, sorted(used - allowed)
