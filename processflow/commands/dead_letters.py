"""``processflow dead-letters``: list, show, replay or skip parked outbox events.

Exit codes: 0 done, 2 an unknown id, an event that is not parked, or a
database that cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict

from outbox_relay import dead_letters, rules
from processflow.db import create_engine, utcnow
from processflow.settings import DEFAULT_SQLITE_URL, add_arguments, load, option

ERROR_COLUMN_CHARS = 60


@dataclass(frozen=True)
class DeadLetterSettings:
    database_url: str = option(
        DEFAULT_SQLITE_URL,
        "SQLAlchemy URL of the ProcessFlow database (the outbox).",
        secret=True,
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dead-letters",
        help="list, show, replay or skip parked outbox events",
        description="Events the relay gave up on park their session. Replay one "
        "to try it again (its session's later events follow in order), or skip it "
        "to let the rest of the session go on.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="table of parked events")
    listing.add_argument("--limit", type=int, default=1000, help="most rows shown")
    show = actions.add_parser("show", help="one event decoded as JSON, with its error")
    replay = actions.add_parser("replay", help="re-queue a parked event")
    skip = actions.add_parser("skip", help="discard a parked event (give up on it)")
    for sub in (listing, show, replay, skip):
        add_arguments(sub, DeadLetterSettings)
    for sub in (show, replay, skip):
        sub.add_argument("id", help="outbox id (from list) or event id")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(DeadLetterSettings, args)
    engine = create_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            return _ACTIONS[args.action](connection, args)
    except dead_letters.DeadLetterError as error:
        print(f"processflow dead-letters {args.action}: {error}", file=sys.stderr)
        return 2
    except sa.exc.OperationalError as error:
        print(
            f"processflow dead-letters: cannot reach the database: {error.orig}",
            file=sys.stderr,
        )
        return 2
    finally:
        engine.dispose()


def _list(connection: sa.Connection, args: argparse.Namespace) -> int:
    events = dead_letters.select_dead_events(connection, limit=args.limit)
    rows = [
        (
            str(e.id),
            e.session_id,
            str(e.sequence),
            e.event_type,
            str(e.attempts),
            (e.last_error or "").replace("\n", " ")[:ERROR_COLUMN_CHARS],
        )
        for e in events
    ]
    header = ("ID", "SESSION", "SEQUENCE", "TYPE", "ATTEMPTS", "LAST ERROR")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    print(f"{len(rows)} parked event(s)")
    return 0


def _show(connection: sa.Connection, args: argparse.Namespace) -> int:
    event = dead_letters.select_event(connection, args.id)
    document: dict[str, Any] = {
        "id": event.id,
        "event_id": event.event_id,
        "session_id": event.session_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "status": event.status,
        "attempts": event.attempts,
        "next_attempt_at": event.next_attempt_at.isoformat(),
        "created_at": event.created_at.isoformat(),
        "last_error": event.last_error,
    }
    try:
        decoded = rules.decode(event.payload, event.event_type)
        document["payload"] = MessageToDict(decoded, preserving_proto_field_name=True)
    except rules.RuleError as error:
        document["payload_error"] = str(error)
        document["payload_hex"] = event.payload.hex()
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _replay(connection: sa.Connection, args: argparse.Namespace) -> int:
    event = dead_letters.replay_dead_event(connection, args.id, utcnow())
    print(
        f"event {event.id} (session {event.session_id}, sequence {event.sequence}) "
        "re-queued"
    )
    return 0


def _skip(connection: sa.Connection, args: argparse.Namespace) -> int:
    event = dead_letters.discard_dead_event(connection, args.id, utcnow())
    print(
        f"event {event.id} (session {event.session_id}, sequence {event.sequence}) "
        "discarded; the rest of the session goes on"
    )
    return 0


_ACTIONS = {"list": _list, "show": _show, "replay": _replay, "skip": _skip}
