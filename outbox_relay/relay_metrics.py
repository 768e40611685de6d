"""Counting a settled relay batch in the Prometheus families of
processflow/metrics.py: events per legacy sink and outcome, batch size and
duration.

An event counts once for each sink its rule writes: ``applied`` for the
sinks written, ``skipped`` for sinks switched off, and ``retried`` or
``dead_lettered`` for the sinks of a failed event (``none`` when the event
cannot even be decoded). A redelivered event, found in the ledger and
acknowledged without a second effect, counts as applied like the first
delivery (the batch outcome does not say which events were redelivered).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Sequence

from outbox_relay import rules
from outbox_relay.batch import BatchOutcome, filter_sinks
from outbox_relay.outbox_store import ClaimedEvent
from processflow import metrics

NO_SINK = "none"


def sinks_of(
    event: ClaimedEvent, disabled: Collection[str]
) -> tuple[set[str], tuple[str, ...]]:
    """(sinks written, sinks skipped) by ``event``'s rule."""
    try:
        decoded = rules.decode(event.payload, event.event_type)
        effects = rules.effects_of(decoded, dt.datetime(1970, 1, 1))
    except Exception:
        return set(), ()
    kept, skipped = filter_sinks(effects, disabled)
    return {effect.table for effect in kept}, skipped


def observe_batch(
    claimed: Sequence[ClaimedEvent],
    outcome: BatchOutcome,
    elapsed_seconds: float,
    disabled_sinks: Collection[str],
    max_attempts: int,
) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for event in outcome.applied:
        written, skipped = outcome.sinks.get(event.id) or sinks_of(
            event, disabled_sinks
        )
        for sink in written:
            counts[sink, "applied"] += 1
        for sink in skipped:
            counts[sink, "skipped"] += 1
    for event, _error in outcome.failed:
        outcome_name = (
            "dead_lettered" if event.attempts + 1 >= max_attempts else "retried"
        )
        written, _ = outcome.sinks.get(event.id) or sinks_of(event, disabled_sinks)
        for sink in written or {NO_SINK}:
            counts[sink, outcome_name] += 1
    for (sink, outcome_name), count in counts.items():
        metrics.record_relay_event(sink, outcome_name, count)
    metrics.record_relay_batch(len(claimed), elapsed_seconds)
