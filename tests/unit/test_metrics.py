"""Metric helpers that need no running database."""

from __future__ import annotations

import logging

import pytest

from processflow import metrics
from processflow.db import create_engine


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9100", "host:", "host:port", "host:70000"])
def test_parse_listen_names_the_flag(listen: str) -> None:
    with pytest.raises(ValueError, match="--metrics-listen"):
        metrics.parse_listen(listen)


def test_outcomes_and_sources_are_closed_sets() -> None:
    with pytest.raises(ValueError, match="outcome"):
        metrics.record_relay_event("LLMUsageLogs", "lost")
    with pytest.raises(ValueError, match="source"):
        metrics.record_relay_wakeup("telepathy")
    before = metrics.REGISTRY.get_sample_value(
        "processflow_relay_events_total", {"sink": "LLMUsageLogs", "outcome": "skipped"}
    )
    metrics.record_relay_event("LLMUsageLogs", "skipped", 3)
    after = metrics.REGISTRY.get_sample_value(
        "processflow_relay_events_total", {"sink": "LLMUsageLogs", "outcome": "skipped"}
    )
    assert (after or 0) - (before or 0) == 3


def test_unreadable_outbox_skips_the_gauges(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine("sqlite:////nonexistent-directory/x.db")
    collector = metrics.OutboxCollector(engine)
    with caplog.at_level(logging.WARNING):
        assert list(collector.collect()) == []
    assert [getattr(r, "event", None) for r in caplog.records] == [
        "metrics_outbox_unreadable"
    ]
    assert {f.name for f in collector.describe()} == {
        "processflow_outbox_backlog",
        "processflow_outbox_oldest_pending_age_seconds",
        "processflow_outbox_dead_letters",
    }
