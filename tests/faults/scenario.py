"""One fault run: load starts, rounds of faults follow one another until the
time is up, the load stops, the relays catch up, and the checks run.

A round, its times as fractions of the round's length:

    0.00  poison on: the legacy table refuses the poison model's calls,
          and clients start sending it
    0.25  PostgreSQL restarts (fast: every connection is cut)
    0.40  legacy database unreachable (the proxy drops every connection)
    0.55  legacy database back
    0.60  poison off: the constraint goes, parked events are replayed
    0.80  PostgreSQL restarts (immediate: a crash, then recovery)

and all along one of the three relays is SIGKILLed and replaced every
``kill_interval_seconds``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.faults.checks import Findings, check
from tests.faults.load import Load
from tests.faults.system import RELAY_BATCH_SIZE, System, wait_until_settled

STEPS = (
    (0.00, "poison_on"),
    (0.25, "restart_fast"),
    (0.40, "legacy_down"),
    (0.55, "legacy_up"),
    (0.60, "poison_off"),
    (0.80, "restart_immediate"),
)


@dataclass(frozen=True)
class Plan:
    duration_seconds: float
    round_seconds: float = 40.0
    kill_interval_seconds: float = 3.0
    clients: int = 4
    relays: int = 3
    relay_batch_size: int = RELAY_BATCH_SIZE
    settle_timeout_seconds: float = 180.0
    seed: int = 7


@dataclass
class Figures:
    seconds: float
    rounds: int
    sessions: int
    events: int
    writes_accepted: int
    writes_unknown: int
    unknown_applied: int
    unknown_absent: int
    client_retries: int
    internal_errors: int
    request_id_replays: int
    replay_mismatches: int
    relay_kills: int
    postgres_restarts: int
    legacy_outages: int
    poison_rounds: int
    dead_letters_replayed: int
    duplicates: int
    lost: int
    out_of_order: int
    verify_gaps: int
    unsettled: int
    time_to_full_coverage_seconds: float

    def table(self) -> str:
        width = max(len(name) for name in asdict(self))
        return "\n".join(
            f"{name.replace('_', ' '):<{width}}  {value}"
            for name, value in asdict(self).items()
        )


class Run:
    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory
        self.rng = random.Random(plan.seed)
        self.rounds = 0
        self.events: list[str] = []

    def _do(self, system: System, load: Load, step: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {step}")
        if step == "poison_on":
            system.poison_on()
            load.poison.set()
        elif step == "poison_off":
            load.poison.clear()
            system.poison_off()
            system.replay_dead_letters()
        elif step == "legacy_down":
            system.legacy_down()
        elif step == "legacy_up":
            system.legacy_up()
        elif step.startswith("restart_"):
            system.restart_postgres(step.removeprefix("restart_"))

    def _round(self, system: System, load: Load, deadline: float) -> None:
        began = time.monotonic()
        length = self.plan.round_seconds
        next_kill = began + self.plan.kill_interval_seconds
        pending = list(STEPS)
        while pending or time.monotonic() < began + length:
            now = time.monotonic()
            if pending and now >= began + pending[0][0] * length:
                self._do(system, load, pending.pop(0)[1])
                continue
            if now >= next_kill:
                system.kill_a_relay(self.rng)
                next_kill = now + self.plan.kill_interval_seconds
            if not pending and now >= deadline:
                break
            time.sleep(0.05)
        self.rounds += 1

    def execute(self) -> tuple[Figures, Findings]:
        began = time.monotonic()
        system = System.start(
            self.directory,
            relays=self.plan.relays,
            relay_batch_size=self.plan.relay_batch_size,
        )
        try:
            assert system.server is not None
            load = Load(system.server.address, self.plan.clients, self.plan.seed)
            load.start()
            deadline = began + self.plan.duration_seconds
            try:
                while time.monotonic() < deadline or self.rounds == 0:
                    self._round(system, load, deadline)
            finally:
                load.poison.clear()
                load.finish()
                system.legacy_up()
                system.poison_off()
            assert not load.figures.unexpected, load.figures.unexpected
            assert system.relays_alive(), "a relay died on its own"
            settle = wait_until_settled(system, self.plan.settle_timeout_seconds)
            findings = check(system, load)
        finally:
            system.stop()
        counters = system.counters
        figures = Figures(
            seconds=round(time.monotonic() - began, 1),
            rounds=self.rounds,
            sessions=findings.sessions,
            events=findings.events,
            writes_accepted=load.figures.accepted,
            writes_unknown=load.figures.unknown,
            unknown_applied=findings.unknown_applied,
            unknown_absent=findings.unknown_absent,
            client_retries=load.figures.retries,
            internal_errors=load.figures.internal_errors,
            request_id_replays=load.figures.replays,
            replay_mismatches=load.figures.replay_mismatches,
            relay_kills=counters.relay_kills,
            postgres_restarts=counters.postgres_restarts,
            legacy_outages=counters.legacy_outages,
            poison_rounds=counters.poison_rounds,
            dead_letters_replayed=counters.dead_letters_replayed,
            duplicates=findings.duplicates,
            lost=findings.lost,
            out_of_order=findings.out_of_order,
            verify_gaps=findings.verify_gaps,
            unsettled=findings.unsettled,
            time_to_full_coverage_seconds=round(settle, 2),
        )
        return figures, findings


def assert_nothing_lost(figures: Figures, findings: Findings) -> None:
    summary: dict[str, Any] = {
        "figures": asdict(figures),
        "problems": findings.problems,
    }
    text = json.dumps(summary, indent=2, default=str)
    assert figures.lost == 0, text
    assert figures.duplicates == 0, text
    assert figures.out_of_order == 0, text
    assert figures.verify_gaps == 0, text
    assert figures.unsettled == 0, text
    assert figures.replay_mismatches == 0, text
    assert figures.internal_errors == 0, text
    assert not findings.problems, text
