"""The relay's guarantees on real databases: exactly-once effect across a
fault, one transaction on a shared database, poison events parking only
their session, operator replay and skip, disabled sinks, retention."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outbox_relay import relay as relay_module
from outbox_relay.batch import BatchOutcome
from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from processflow import cli
from processflow.db import create_engine
from processflow.settings import SettingsError
from processflow.v1.events_pb2 import OutboxEvent
from server.schema import outbox
from tests.support.outbox import (
    SessionEvents,
    status_counts,
    typical_session,
    write_events,
    write_raw_event,
)
from tests.support.polling import wait_for
from tests.support.relay import Target, count_rows, legacy_rows, make_target


class InjectedFault(Exception):
    pass


def _drain(relay: Relay) -> int:
    total = 0
    while applied := relay.run_once():
        total += applied
    return total


def _legacy_counts(url: str) -> dict[str, int]:
    return {
        name: count_rows(url, name)
        for name in (
            "PromptSuccessTracking",
            "PromptConstructionTraces",
            "PromptConstructionSteps",
            "LLMUsageLogs",
            "processflow_applied_events",
        )
    }


def _sessions(count: int, prefix: str = "s") -> list[OutboxEvent]:
    return [e for i in range(count) for e in typical_session(f"{prefix}-{i:03d}")]


@pytest.fixture(params=["postgresql+postgresql", "postgresql+mariadb"])
def separate(request: pytest.FixtureRequest) -> Target:
    return make_target(request, request.param)


def test_fault_after_legacy_commit_has_no_second_effect(separate: Target) -> None:
    class CrashBeforeAcknowledging(Relay):
        crashes = 0

        def after_legacy_commit(self, outcome: BatchOutcome) -> None:
            if self.crashes < 2:
                self.crashes += 1
                raise InjectedFault("crash between the legacy commit and the ack")

    events = _sessions(20)
    faulty = CrashBeforeAcknowledging(separate.settings(batch_size=50))
    write_events(faulty.outbox_engine, events)
    for _ in range(2):
        with pytest.raises(InjectedFault):
            faulty.run_once()
    faulty.close()
    # The first batch reached the legacy database twice, and was never
    # acknowledged: its redelivery found the ledger rows.
    assert status_counts(faulty.outbox_engine) == {"pending": 160}
    assert count_rows(separate.legacy_url, "processflow_applied_events") == 50

    relay = Relay(separate.settings(batch_size=50))
    try:
        outcome_counts = [relay.settle_batch() for _ in range(4)]
        assert sum(r.applied for r in outcome_counts) == 160
        assert _drain(relay) == 0
        assert status_counts(relay.outbox_engine) == {"applied": 160}
    finally:
        relay.close()
    assert _legacy_counts(separate.legacy_url) == {
        "PromptSuccessTracking": 20,
        "PromptConstructionTraces": 20,
        "PromptConstructionSteps": 40,
        "LLMUsageLogs": 40,
        "processflow_applied_events": 160,
    }
    (usage,) = legacy_rows(separate.legacy_url, "TokenUsageAnalytics", "Date")
    assert (usage["TotalRequests"], usage["TotalTokensUsed"]) == (40, 20 * 200)


def test_shared_database_applies_and_acknowledges_in_one_transaction(
    database_url: str,
) -> None:
    class FailingAcknowledgement(Relay):
        def _acknowledge(self, *args: object, **kwargs: object) -> None:
            raise InjectedFault("acknowledgement failed")

    target = Target(database_url, None)
    faulty = FailingAcknowledgement(target.settings())
    write_events(faulty.outbox_engine, _sessions(3))
    with pytest.raises(InjectedFault):
        faulty.run_once()
    faulty.close()
    assert set(_legacy_counts(database_url).values()) == {0}
    assert status_counts(faulty.outbox_engine) == {"pending": 24}

    relay = Relay(target.settings())
    try:
        assert _drain(relay) == 24
    finally:
        relay.close()
    assert _legacy_counts(database_url)["processflow_applied_events"] == 24


def _overflowing_call(session: SessionEvents, call_id: str) -> OutboxEvent:
    # InputTokens is a legacy INT: this value can never be stored.
    return session.llm_call(call_id, input_tokens=2**31 + 5)


def _legacy_sql(legacy_url: str, statement: str) -> None:
    engine = create_engine(legacy_url)
    with engine.begin() as connection:
        if connection.dialect.name != "postgresql":
            statement = statement.replace('"', "")
        connection.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture(params=["postgresql", "postgresql+mariadb"])
def strict_target(request: pytest.FixtureRequest) -> Target:
    return make_target(request, request.param)


def test_poison_event_parks_its_session_only_then_replay_and_skip(
    strict_target: Target,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = _sessions(5, prefix="good")
    bad = SessionEvents("bad")
    bad_events = [
        bad.started(),
        bad.llm_call("bad-call", total_tokens=2_000_000),
        bad.step("p", "prompt-building", output_data="late"),
        bad.completed(),
    ]
    worse = SessionEvents("worse")
    worse_events = [
        worse.started(),
        _overflowing_call(worse, "worse-call"),
        worse.completed(),
    ]
    # The legacy application's own constraint, which the rules cannot know.
    _legacy_sql(
        strict_target.legacy_url,
        'ALTER TABLE "LLMUsageLogs" ADD CONSTRAINT "CK_TokensCap" '
        'CHECK ("TotalTokens" <= 1000000)',
    )
    settings = strict_target.settings(batch_size=7, max_attempts=3)
    relay = Relay(settings)
    url = strict_target.database_url
    write_events(relay.outbox_engine, [*good, *bad_events, *worse_events])
    try:
        with caplog.at_level(logging.WARNING, logger="outbox_relay.relay"):
            wait_for(
                lambda: (
                    relay.run_once() == 0
                    and status_counts(relay.outbox_engine).get("dead") == 2
                ),
                timeout=15,
                message="two sessions parked",
            )
        assert status_counts(relay.outbox_engine) == {
            "applied": 40 + 2,
            "dead": 2,
            "pending": 3,
        }
        events = Counter(getattr(r, "event", None) for r in caplog.records)
        assert events["outbox_event_retry"] == 4
        assert events["outbox_event_dead_lettered"] == 2
        dead_record = next(r for r in caplog.records if r.levelno == logging.ERROR)
        assert dead_record.getMessage() == "event dead-lettered"

        assert cli.main(["dead-letters", "list", "--database-url", url]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert listing[0].split()[:5] == [
            "ID",
            "SESSION",
            "SEQUENCE",
            "TYPE",
            "ATTEMPTS",
        ]
        rows = [line.split() for line in listing[1:-1]]
        assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
            ("bad", "2", "llm_call_recorded", "3"),
            ("worse", "2", "llm_call_recorded", "3"),
        ]
        assert listing[-1] == "2 parked event(s)"
        bad_id, worse_id = rows[0][0], rows[1][0]
        assert "out of range" in " ".join(rows[1][5:]).lower()

        assert cli.main(["dead-letters", "show", bad_id, "--database-url", url]) == 0
        shown = capsys.readouterr().out
        assert '"call_id": "bad-call"' in shown and '"last_error": ' in shown

        # The operator drops the legacy constraint, then replays: the session
        # flows again, in order.
        drop = (
            "DROP CONSTRAINT"
            if "mariadb" not in strict_target.legacy_url
            else "DROP CHECK"
        )
        _legacy_sql(
            strict_target.legacy_url,
            f'ALTER TABLE "LLMUsageLogs" {drop} "CK_TokensCap"',
        )
        assert cli.main(["dead-letters", "replay", bad_id, "--database-url", url]) == 0
        assert "re-queued" in capsys.readouterr().out
        # The other one is given up on: the rest of its session goes on.
        assert cli.main(["dead-letters", "skip", worse_id, "--database-url", url]) == 0
        _drain(relay)
        assert status_counts(relay.outbox_engine) == {
            "applied": 40 + 2 + 4,
            "discarded": 1,
        }
        ledger = legacy_rows(
            strict_target.legacy_url, "processflow_applied_events", "sequence"
        )
        assert [r["sequence"] for r in ledger if r["session_id"] == "bad"] == [
            1,
            2,
            3,
            4,
        ]
        assert sorted(r["sequence"] for r in ledger if r["session_id"] == "worse") == [
            1,
            3,
        ]
        tracking = {
            r["SessionId"]: r
            for r in legacy_rows(
                strict_target.legacy_url, "PromptSuccessTracking", "Id"
            )
        }
        assert tracking["bad"]["GeneratedPrompt"] == "late"
        assert tracking["worse"]["UpdatedDate"] is not None  # completed after the skip

        # Unknown ids and events that are not parked are refused, exit code 2.
        assert (
            cli.main(["dead-letters", "replay", "999999", "--database-url", url]) == 2
        )
        assert cli.main(["dead-letters", "skip", bad_id, "--database-url", url]) == 2
        assert cli.main(["dead-letters", "show", "nope", "--database-url", url]) == 2
        errors = capsys.readouterr().err
        assert "no outbox event with id 999999" in errors
        assert f"outbox event {bad_id} is not parked (status applied)" in errors
    finally:
        relay.close()


def test_corrupt_payload_is_parked_and_skippable(database_url: str) -> None:
    target = Target(database_url, None)
    relay = Relay(target.settings(max_attempts=2))
    session = SessionEvents("corrupt")
    write_events(relay.outbox_engine, [session.started()])
    write_raw_event(
        relay.outbox_engine,
        session_id="corrupt",
        sequence=2,
        event_type="step_finished",
        payload=b"\x0a\xff\xff\xff garbage",
    )
    session.sequence = 2
    write_events(relay.outbox_engine, [session.completed()])
    try:
        wait_for(
            lambda: (
                relay.run_once() == 0 and status_counts(relay.outbox_engine).get("dead")
            ),
            timeout=10,
            message="corrupt event parked",
        )
        with relay.outbox_engine.connect() as connection:
            dead = connection.execute(
                sa.select(outbox.c.id, outbox.c.last_error).where(
                    outbox.c.status == "dead"
                )
            ).one()
        assert dead.last_error.startswith("RuleError: payload does not parse")
        assert (
            cli.main(
                ["dead-letters", "skip", str(dead.id), "--database-url", database_url]
            )
            == 0
        )
        _drain(relay)
        assert status_counts(relay.outbox_engine) == {"applied": 2, "discarded": 1}
    finally:
        relay.close()


def test_disabled_sinks_are_recorded_in_the_ledger(database_url: str) -> None:
    target = Target(database_url, None)
    relay = Relay(
        target.settings(
            disabled_sinks=("PromptConstructionTraces", "TokenUsageAnalytics")
        )
    )
    write_events(relay.outbox_engine, typical_session("off"))
    try:
        assert _drain(relay) == 8
    finally:
        relay.close()
    ledger = legacy_rows(database_url, "processflow_applied_events", "sequence")
    assert [r["skipped_sinks"] for r in ledger] == [
        "PromptConstructionTraces",
        "",
        "PromptConstructionSteps",  # needs its trace row
        "PromptConstructionSteps,PromptConstructionTraces",
        "TokenUsageAnalytics",
        "TokenUsageAnalytics",
        "",
        "PromptConstructionTraces",
    ]
    assert _legacy_counts(database_url) == {
        "PromptSuccessTracking": 1,
        "PromptConstructionTraces": 0,
        "PromptConstructionSteps": 0,
        "LLMUsageLogs": 2,
        "processflow_applied_events": 8,
    }
    assert count_rows(database_url, "TokenUsageAnalytics") == 0
    assert count_rows(database_url, "processflow_token_usage_contributions") == 0
    (tracking,) = legacy_rows(database_url, "PromptSuccessTracking", "Id")
    assert tracking["GeneratedPrompt"] == "PROMPT off"


def test_unknown_sink_is_a_clear_settings_error() -> None:
    with pytest.raises(SettingsError, match="--disabled-sinks: unknown sink 'Nope'"):
        Relay(RelaySettings(disabled_sinks=("Nope",)))


def test_retention_prunes_old_settled_events_in_bounded_batches(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = Target(database_url, None)
    relay = Relay(
        target.settings(retention_hours=1.0, retention_batch_size=3, max_attempts=1)
    )
    engine = relay.outbox_engine
    write_events(engine, _sessions(2, prefix="old"))
    poison = SessionEvents("poison")
    write_events(engine, [poison.started(), _poison_step(poison)])
    _drain(relay)
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox).values(
                settled_at=outbox.c.settled_at - dt.timedelta(hours=2)
            )
        )
        skipped_id = connection.execute(
            sa.select(outbox.c.id).where(outbox.c.status == "dead")
        ).scalar_one()
    assert (
        cli.main(
            ["dead-letters", "skip", str(skipped_id), "--database-url", database_url]
        )
        == 0
    )
    write_events(engine, _sessions(1, prefix="new"))
    _drain(relay)
    fresh = SessionEvents("fresh")
    write_events(engine, [fresh.started()])  # stays pending
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox)
            .where(outbox.c.session_id == "fresh")
            .values(created_at=outbox.c.created_at - dt.timedelta(hours=5))
        )
    # 17 applied events are older than the retention; the skipped one was
    # settled just now and the new ones are recent, so they stay. Three go per
    # statement, two statements per pass.
    monkeypatch.setattr(relay_module, "PRUNE_STATEMENTS_PER_PASS", 2)
    try:
        assert relay.prune_settled_events() == 6
        assert relay.prune_settled_events() == 6
        assert relay.prune_settled_events() == 5
        assert relay.prune_settled_events() == 0
    finally:
        relay.close()
    assert status_counts(engine) == {"applied": 8, "discarded": 1, "pending": 1}


def _poison_step(session: SessionEvents) -> OutboxEvent:
    from processflow.v1 import resources_pb2

    return session.step("r", "auth", status=resources_pb2.STEP_STATUS_RUNNING)


@pytest.fixture
def running() -> Iterator[list[tuple[Relay, threading.Thread, threading.Event]]]:
    started: list[tuple[Relay, threading.Thread, threading.Event]] = []
    yield started
    for relay, thread, stop in started:
        stop.set()
        thread.join(timeout=10)
        relay.close()


def _start(
    relay: Relay, running: list[tuple[Relay, threading.Thread, threading.Event]]
) -> threading.Event:
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    running.append((relay, thread, stop))
    return stop


def test_in_process_wake_and_stop(
    sqlite_url: str, running: list[tuple[Relay, threading.Thread, threading.Event]]
) -> None:
    target = Target(sqlite_url, None)
    relay = Relay(target.settings(poll_interval_seconds=30.0))
    stop = _start(relay, running)
    wait_for(lambda: relay.run_once() == 0, message="relay idle")
    write_events(relay.outbox_engine, typical_session("woken"))
    relay.wake()
    wait_for(
        lambda: status_counts(relay.outbox_engine) == {"applied": 8},
        timeout=5,
        message="woken relay applied the events",
    )
    stop.set()
    running[0][1].join(timeout=5)
    assert not running[0][1].is_alive()


def test_one_failing_event_in_a_batch_does_not_undo_the_others(
    database_url: str,
) -> None:
    # A prompt step whose session never started has no trace row to refer
    # to: the foreign key fails, on SQLite as on PostgreSQL. The batch falls
    # back to one savepoint per event; the others in the batch are kept.
    target = Target(database_url, None)
    relay = Relay(target.settings(max_attempts=2, batch_size=100))
    orphan = SessionEvents("orphan")
    orphan.sequence = 1  # its session_started was never written
    write_events(
        relay.outbox_engine,
        [
            *typical_session("kept-1"),
            orphan.step("p", "prompt-building", output_data="x"),
            orphan.completed(),
            *typical_session("kept-2"),
        ],
    )
    try:
        wait_for(
            lambda: (
                relay.run_once() == 0
                and status_counts(relay.outbox_engine).get("dead") == 1
            ),
            timeout=10,
            message="orphan step parked",
        )
    finally:
        relay.close()
    assert status_counts(relay.outbox_engine) == {
        "applied": 16,
        "dead": 1,
        "pending": 1,
    }
    assert _legacy_counts(database_url)["processflow_applied_events"] == 16
    assert count_rows(database_url, "PromptSuccessTracking") == 2
