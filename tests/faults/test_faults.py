"""The CI fault run: about a minute of load through two rounds of faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.faults.scenario import Plan, Run, assert_nothing_lost
from tests.support.databases import ThrowawayCluster  # noqa: F401 - the cluster used


@pytest.mark.timeout(280)
def test_nothing_is_lost_or_doubled_under_faults(tmp_path: Path) -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        message = "PostgreSQL server programs (initdb) are not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    plan = Plan(duration_seconds=60, round_seconds=30, kill_interval_seconds=3)
    figures, findings = Run(plan, tmp_path).execute()
    print("\n" + figures.table())
    assert figures.writes_accepted > 100
    assert figures.relay_kills >= 10
    assert figures.postgres_restarts >= 4
    assert figures.legacy_outages >= 2
    assert figures.dead_letters_replayed >= 1
    assert figures.request_id_replays >= 1
    assert_nothing_lost(figures, findings)
