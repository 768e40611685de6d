"""``processflow keys``: create API keys and certificate mappings, list them.

A key is printed once, when it is created; the keys file keeps only its
sha256 (server/auth.py describes the file). A running server picks the new
line up within --api-keys-reload-seconds, or at once on SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processflow.settings import SettingsError, add_arguments, load, option
from server.auth import SCOPES, KeysFileError, hash_key, parse_entry, parse_keys

KEY_PREFIX = "pfk_"


@dataclass(frozen=True)
class KeysSettings:
    api_keys_file: str | None = option(
        None, "File of API keys (hashed) and certificate identities; required."
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="create API keys and certificate mappings for the server",
        description="Manage the server's keys file. `create` prints a new key "
        "once and stores only its sha256; `map-certificate` lets an mTLS client "
        "certificate (subject CN or SAN) act as a principal; `list` shows the "
        "entries without their hashes.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key; print it once")
    certificate = actions.add_parser(
        "map-certificate", help="map a client certificate identity to a principal"
    )
    certificate.add_argument(
        "--identity", required=True, help="subject CN or SAN of the certificate"
    )
    listing = actions.add_parser("list", help="the entries, without hashes")
    for sub in (create, certificate):
        sub.add_argument("--tenant", required=True, help="tenant of the principal")
        sub.add_argument(
            "--scopes",
            required=True,
            help=f"comma-separated, from {', '.join(SCOPES)}",
        )
        sub.add_argument(
            "--key-id", help="name of the entry (unique); generated when omitted"
        )
    for sub in (create, certificate, listing):
        add_arguments(sub, KeysSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(KeysSettings, args)
    if not settings.api_keys_file:
        raise SettingsError("--api-keys-file: required")
    path = Path(settings.api_keys_file)
    try:
        if args.action == "list":
            return _list(path)
        return _add(path, args)
    except KeysFileError as error:
        print(f"processflow keys {args.action}: {path}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"processflow keys {args.action}: {path}: {error.strerror}",
            file=sys.stderr,
        )
        return 2


def _existing(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _add(path: Path, args: argparse.Namespace) -> int:
    key_id = args.key_id or f"key-{secrets.token_hex(4)}"
    entry: dict[str, Any] = {"key_id": key_id}
    secret = None
    if args.action == "create":
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        entry["sha256"] = hash_key(secret)
    else:
        entry["certificate"] = args.identity
    entry["tenant"] = args.tenant
    entry["scopes"] = [s.strip() for s in args.scopes.split(",") if s.strip()]
    line = json.dumps(entry, separators=(",", ":"))
    existing = _existing(path)
    # The whole file must still load, or the server would refuse it.
    parse_entry("the new entry", line)
    parse_keys(existing + "\n" + line)
    prefix = "" if not existing or existing.endswith("\n") else "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(prefix + line + "\n")
    scopes = ",".join(entry["scopes"])
    if secret is not None:
        print(secret)
        print(
            f"key {key_id} for tenant {args.tenant} ({scopes}) added to {path}; "
            "the key is shown only now",
            file=sys.stderr,
        )
    else:
        print(
            f"certificate {args.identity!r} mapped as {key_id} for tenant "
            f"{args.tenant} ({scopes}) in {path}"
        )
    return 0


def _list(path: Path) -> int:
    entries = parse_keys(_existing(path))
    for entry in entries:
        kind = "key" if entry.sha256 is not None else f"certificate={entry.certificate}"
        principal = entry.principal
        scopes = ",".join(sorted(principal.scopes))
        print(f"{principal.key_id}\ttenant={principal.tenant}\t{scopes}\t{kind}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", file=sys.stderr)
    return 0
