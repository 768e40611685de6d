"""Settings: one frozen object per process, filled from flags and environment.

Every field of a settings dataclass is one option. Its flag is the field name
with dashes (``--database-url``), its environment variable the field name in
capitals behind ``PROCESSFLOW_`` (``PROCESSFLOW_DATABASE_URL``). A flag beats
the environment, which beats the default. Durations carry their unit in the
name. docs/operations.md lists every option; a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

ENV_PREFIX = "PROCESSFLOW_"
DEFAULT_SQLITE_URL = "sqlite:///processflow.db"

T = TypeVar("T")


class SettingsError(ValueError):
    """An option has a value that cannot be used; the message names it."""


def option(default: Any, help: str, *, secret: bool = False) -> Any:
    """Declares one option: its default and the sentence ``--help`` shows."""
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """The scalar type behind ``X | None`` or ``tuple[X, ...]``."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner)
    if origin is tuple:
        return tuple
    return typing.cast(type, annotation)


def _parse(field: dataclasses.Field[Any], kind: type, raw: str) -> Any:
    name = flag_name(field.name)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name}: expected true or false, got {raw!r}")
    if kind is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
        if value < 0:
            raise SettingsError(f"{name}: must not be negative, got {raw!r}")
        return value
    return raw


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Adds one flag per field of the settings class ``cls``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        default = field.default
        shown = "" if default in (None, ()) else f" (default: {default})"
        if kind is tuple:
            shown = shown.replace("(", "(comma-separated; ", 1) if shown else ""
        text = f"{field.metadata['help']}{shown} [env {env_name(field.name)}]"
        if kind is bool:
            parser.add_argument(
                flag_name(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                flag_name(field.name), dest=field.name, default=None, help=text
            )


def load(
    cls: type[T],
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> T:
    """Builds ``cls`` from flags, then environment, then defaults."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _base_type(hints[field.name])
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        given = getattr(args, field.name, None) if args is not None else None
        if given is not None:
            values[field.name] = (
                given if isinstance(given, bool) else _parse(field, kind, str(given))
            )
        elif env_name(field.name) in environ:
            values[field.name] = _parse(field, kind, environ[env_name(field.name)])
    return cls(**values)


def describe(settings: object) -> dict[str, Any]:
    """The settings as a dict for logging, with secrets masked."""
    shown: dict[str, Any] = {}
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if field.metadata.get("secret") and value:
            value = "***"
        elif isinstance(value, str) and "://" in value:
            value = mask_url(value)
        shown[field.name] = value
    return shown


def mask_url(url: str) -> str:
    """Hides the password of a database URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
