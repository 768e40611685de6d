"""``processflow relay``: move outbox events into the legacy tables until
SIGTERM or SIGINT, then finish (or roll back) the current batch and exit 0."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import sqlalchemy as sa

from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from processflow import log as logsetup
from processflow.metrics import start_metrics_server
from processflow.runtime import tune_garbage_collector
from processflow.settings import add_arguments, describe, load

logger = logging.getLogger(__name__)

# Extra time past the grace period for the cancelled batch to unwind.
UNWIND_SECONDS = 2.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "relay",
        help="apply outbox events to the legacy tables",
        description="Claim pending outbox events, write their legacy rows exactly "
        "once, and settle them. Several relays may run at once.",
    )
    add_arguments(parser, RelaySettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(RelaySettings, args)
    logsetup.configure(settings.log_format, settings.log_level)
    try:
        relay = Relay(settings)
    except sa.exc.ArgumentError as error:
        print(f"processflow relay: bad database URL: {error}", file=sys.stderr)
        return 2
    if settings.metrics_listen:
        try:
            start_metrics_server(settings.metrics_listen, relay.outbox_engine)
        except (OSError, ValueError) as error:
            print(f"processflow relay: --metrics-listen: {error}", file=sys.stderr)
            return 2
    logger.info(
        "relay settings", extra={"event": "relay_settings", **describe(settings)}
    )

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "stopping",
            extra={"event": "relay_stopping", "signal": signal.Signals(signum).name},
        )
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    tune_garbage_collector()

    # The loop runs in a worker thread so that the main thread stays free to
    # take signals, whatever the database driver is blocked on.
    worker = threading.Thread(target=relay.run, args=(stop,), name="relay", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        worker.join(timeout=0.5)
    worker.join(timeout=settings.shutdown_grace_seconds + UNWIND_SECONDS)
    if worker.is_alive():
        # The database rolls back whatever the batch had not committed when
        # the connection goes away with the process.
        logger.warning(
            "batch did not unwind in time; exiting",
            extra={"event": "relay_forced_exit"},
        )
        logging.shutdown()
        os._exit(0)
    relay.close()
    return 0
