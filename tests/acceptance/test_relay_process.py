"""The real ``processflow relay`` process: killed with SIGKILL in the middle
of a large backlog and restarted, every event takes effect exactly once;
SIGTERM finishes the batch and exits 0; the dead-letters command's exit codes."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from processflow.db import create_engine
from tests.support.outbox import status_counts, typical_session, write_events
from tests.support.polling import wait_for
from tests.support.relay import Target, count_rows, legacy_rows, make_target

REPO = Path(__file__).resolve().parents[2]


def _start_relay(target: Target, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSFLOW_")}
    command = [
        sys.executable, "-m", "processflow.cli", "relay",
        "--database-url", target.database_url,
        "--poll-interval-seconds", "0.1",
        "--batch-size", "200",
        "--log-format", "json",
        *extra,
    ]  # fmt: skip
    if target.legacy_database_url:
        command += ["--legacy-database-url", target.legacy_database_url]
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def _write_backlog(target: Target, sessions: int) -> int:
    engine = create_engine(target.database_url)
    try:
        for start in range(0, sessions, 250):
            events = [
                e
                for i in range(start, min(start + 250, sessions))
                for e in typical_session(f"k-{i:05d}", user_id=f"user-{i % 4}")
            ]
            write_events(engine, events)
    finally:
        engine.dispose()
    return sessions * 8


def _duplicates(url: str, table: str, column: str) -> int:
    rows = legacy_rows(url, table, column)
    return len(rows) - len({row[column] for row in rows})


def test_kill_minus_nine_mid_backlog_then_restart_is_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(request, "postgresql+postgresql")
    sessions = 1500
    total = _write_backlog(target, sessions)
    ledger = target.legacy_url
    log = tmp_path / "relay.log"

    def applied_at_least(share: float) -> bool:
        return count_rows(ledger, "processflow_applied_events") >= share * total

    kills = 0
    for share in (0.15, 0.4, 0.65):
        process = _start_relay(target, log)
        try:
            wait_for(
                functools.partial(applied_at_least, share),
                timeout=90,
                interval=0.05,
                message=f"{share:.0%} of the backlog applied",
            )
        finally:
            process.kill()
            process.wait(10)
        kills += 1
        assert process.returncode == -signal.SIGKILL

    process = _start_relay(target, log)
    engine = create_engine(target.database_url)
    try:
        wait_for(
            lambda: status_counts(engine) == {"applied": total},
            timeout=120,
            interval=0.2,
            message="the whole backlog applied after the kills",
        )
    finally:
        engine.dispose()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()[-3000:]

    duplicates = (
        _duplicates(ledger, "processflow_applied_events", "event_id")
        + _duplicates(ledger, "PromptSuccessTracking", "SessionId")
        + _duplicates(ledger, "LLMUsageLogs", "RequestId")
    )
    print(f"\n{total} events relayed, {kills} kills survived, {duplicates} duplicates")
    assert duplicates == 0
    assert count_rows(ledger, "processflow_applied_events") == total
    assert count_rows(ledger, "PromptSuccessTracking") == sessions
    assert count_rows(ledger, "PromptConstructionTraces") == sessions
    assert count_rows(ledger, "PromptConstructionSteps") == 2 * sessions
    assert count_rows(ledger, "LLMUsageLogs") == 2 * sessions
    usage = legacy_rows(ledger, "TokenUsageAnalytics", "UserId")
    assert sum(u["TotalRequests"] for u in usage) == 2 * sessions
    assert sum(u["TotalTokensUsed"] for u in usage) == 200 * sessions
    contributions = legacy_rows(
        ledger, "processflow_token_usage_contributions", "user_id"
    )
    assert [c["total_requests"] for c in contributions] == [
        u["TotalRequests"] for u in usage
    ]


def test_sigterm_finishes_the_batch_and_exits_zero(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(request, "postgresql+postgresql")
    total = _write_backlog(target, 400)
    log = tmp_path / "relay.log"
    process = _start_relay(target, log, "--batch-size", "50")
    wait_for(
        lambda: count_rows(target.legacy_url, "processflow_applied_events") > 0,
        timeout=30,
        message="relay at work",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, log.read_text()[-3000:]
    assert '"event": "relay_stopped"' in log.read_text()

    # Whatever the last batch was, it was settled on both sides: the ledger
    # holds exactly the events the outbox says are applied.
    engine = create_engine(target.database_url)
    try:
        applied = status_counts(engine).get("applied", 0)
    finally:
        engine.dispose()
    assert 0 < applied <= total
    assert count_rows(target.legacy_url, "processflow_applied_events") == applied


def test_sigterm_of_an_idle_relay_exits_zero(sqlite_url: str, tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    process = _start_relay(Target(sqlite_url, None), log)
    wait_for(lambda: "relay_started" in log.read_text(), timeout=30, message="started")
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, log.read_text()[-3000:]


def test_dead_letters_command_exit_codes(sqlite_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "processflow.cli", "dead-letters", *args,
             "--database-url", sqlite_url],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listing = run("list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[-1] == "0 parked event(s)"
    missing = run("replay", "12345")
    assert missing.returncode == 2
    assert "no outbox event with id 12345" in missing.stderr
    engine = create_engine(sqlite_url)
    try:
        write_events(engine, typical_session("fine")[:1])
        with engine.connect() as connection:
            event_id = connection.execute(
                sa.text("SELECT id FROM process_flow_outbox")
            ).scalar()
    finally:
        engine.dispose()
    pending = run("skip", str(event_id))
    assert pending.returncode == 2
    assert "is not parked (status pending)" in pending.stderr
