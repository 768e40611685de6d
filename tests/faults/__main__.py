"""The long fault run, by hand: ``python -m tests.faults --minutes 10``.

Prints the figures as a table and, on the last line, as JSON; exits 1 when
anything was lost, duplicated or applied out of order.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tests.faults.scenario import Plan, Run, assert_nothing_lost
from tests.faults.system import RELAY_BATCH_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration")
    parser.add_argument("--clients", type=int, default=6, help="client threads")
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument("--kill-interval-seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--relay-batch-size",
        type=int,
        default=RELAY_BATCH_SIZE,
        help="the relays' --batch-size (small by default, so kills land "
        "between many batches)",
    )
    parser.add_argument("--directory", help="where logs go (a temp dir by default)")
    args = parser.parse_args(argv)
    directory = Path(args.directory or tempfile.mkdtemp(prefix="processflow-faults-"))
    plan = Plan(
        duration_seconds=args.minutes * 60,
        round_seconds=args.round_seconds,
        kill_interval_seconds=args.kill_interval_seconds,
        clients=args.clients,
        seed=args.seed,
        relay_batch_size=args.relay_batch_size,
        settle_timeout_seconds=600.0,
    )
    print(f"fault run for {args.minutes} minutes; logs in {directory}", flush=True)
    run = Run(plan, directory)
    figures, findings = run.execute()
    print(figures.table())
    print(json.dumps(asdict(figures)))
    try:
        assert_nothing_lost(figures, findings)
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
