"""Waking up and backing off: LISTEN/NOTIFY with a poll as the fallback, and
a legacy database that goes away and comes back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from outbox_relay.listener import libpq_conninfo
from outbox_relay.relay import Relay
from server.schema import outbox
from tests.support.outbox import status_counts, typical_session, write_events
from tests.support.polling import wait_for
from tests.support.relay import Target, count_rows, legacy_rows, make_target
from tests.support.tcp_proxy import TcpProxy


class Running:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=relay.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.relay.close()


@pytest.fixture
def started() -> Iterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for run in runs:
        run.close()


def _idle(relay: Relay) -> bool:
    return relay.listening.is_set() and relay.run_once() == 0


def test_notification_wakes_the_relay_and_applied_is_announced(
    pg_url: str, started: list[Running]
) -> None:
    relay = Relay(Target(pg_url, None).settings(poll_interval_seconds=60.0))
    started.append(Running(relay))
    wait_for(lambda: _idle(relay), message="relay listening and idle")
    with psycopg.connect(libpq_conninfo(pg_url), autocommit=True) as listener:
        listener.execute("LISTEN processflow_applied")
        began = time.monotonic()
        write_events(relay.outbox_engine, typical_session("notified"))
        wait_for(
            lambda: status_counts(relay.outbox_engine) == {"applied": 8},
            timeout=10,
            message="notified events applied",
        )
        # Far sooner than the 60 s poll: the notification woke the relay.
        assert time.monotonic() - began < 10
        announced = [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)]
    assert announced == ["notified"]


def test_lost_notification_costs_at_most_one_poll_interval(
    pg_url: str, started: list[Running]
) -> None:
    relay = Relay(Target(pg_url, None).settings(poll_interval_seconds=0.5))
    started.append(Running(relay))
    wait_for(lambda: _idle(relay), message="relay listening and idle")
    began = time.monotonic()
    write_events(relay.outbox_engine, typical_session("silent"), notify=False)
    wait_for(
        lambda: status_counts(relay.outbox_engine) == {"applied": 8},
        timeout=5,
        interval=0.01,
        message="events applied without a notification",
    )
    # One poll interval, plus the batch itself on a busy machine.
    assert time.monotonic() - began < 0.5 + 1.5


def test_legacy_outage_backs_off_as_a_whole_and_loses_nothing(
    request: pytest.FixtureRequest,
    started: list[Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = make_target(request, "postgresql+postgresql")
    legacy = make_url(target.legacy_url)
    proxy = TcpProxy(legacy.host or "127.0.0.1", legacy.port or 5432)
    request.addfinalizer(proxy.close)
    through_proxy = legacy.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False
    )
    settings = Target(target.database_url, through_proxy).settings(
        retry_initial_seconds=0.05,
        retry_max_seconds=0.4,
        outage_report_interval_seconds=0.5,
        max_attempts=2,
    )
    relay = Relay(settings)
    started.append(Running(relay))
    engine = relay.outbox_engine
    write_events(engine, [e for i in range(5) for e in typical_session(f"before-{i}")])
    wait_for(
        lambda: status_counts(engine) == {"applied": 40}, timeout=10, message="warm"
    )

    with caplog.at_level(logging.WARNING, logger="outbox_relay.relay"):
        proxy.down()
        outage_began = time.monotonic()
        write_events(
            engine, [e for i in range(10) for e in typical_session(f"during-{i}")]
        )
        wait_for(lambda: proxy.refused >= 5, timeout=10, message="relay retrying")
        outage = time.monotonic() - outage_began
        refused = proxy.refused
        proxy.up()
        wait_for(
            lambda: status_counts(engine) == {"applied": 120},
            timeout=15,
            message="everything applied after the outage",
        )
    # Without the whole-relay backoff a busy loop would connect thousands of
    # times; with it, a handful per second of outage at most.
    print(f"outage {outage:.2f}s, {refused} connection attempts refused")
    assert refused <= 10 + 10 * outage, (refused, outage)
    reports = [
        r for r in caplog.records if r.getMessage() == "legacy database unreachable"
    ]
    assert 1 <= len(reports) <= 2 + outage / 0.5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [
        r for r in caplog.records if getattr(r, "event", "") == "outbox_event_retry"
    ]
    with engine.connect() as connection:
        attempts = connection.execute(
            sa.select(sa.func.max(outbox.c.attempts))
        ).scalar()
    assert attempts == 0, "the outage was counted against events"
    assert count_rows(target.legacy_url, "processflow_applied_events") == 120
    assert count_rows(target.legacy_url, "PromptSuccessTracking") == 15
    (usage,) = legacy_rows(target.legacy_url, "TokenUsageAnalytics", "UserId")
    assert usage["TotalRequests"] == 30
