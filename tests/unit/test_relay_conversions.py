"""The relay's own spellings of two library conversions give exactly what
the libraries give: deterministic legacy ids (uuid5) and timestamps
(Timestamp.ToDatetime), including the errors for invalid timestamps."""

from __future__ import annotations

import uuid

import pytest

from outbox_relay import rules
from processflow.v1 import events_pb2


@pytest.mark.parametrize(
    "natural_key",
    [(), ("",), ("trace-s1",), ("s-1", "step/ü€"), ("a" * 500, "\x1f", "x")],
)
def test_legacy_id_is_uuid5_of_the_joined_key(natural_key: tuple[str, ...]) -> None:
    name = "\x1f".join(("PromptConstructionSteps", *natural_key))
    expected = str(uuid.uuid5(rules.ID_NAMESPACE, name))
    assert rules.legacy_id("PromptConstructionSteps", *natural_key) == expected


@pytest.mark.parametrize("seconds", [-62135596800, -1, 0, 1773480413, 253402300799])
@pytest.mark.parametrize("nanos", [0, 999, 1000, 589000000, 999999999])
def test_timestamp_matches_to_datetime(seconds: int, nanos: int) -> None:
    event = events_pb2.OutboxEvent()
    event.occurred_at.seconds = seconds
    event.occurred_at.nanos = nanos
    assert rules.timestamp(event, "occurred_at") == event.occurred_at.ToDatetime()


@pytest.mark.parametrize(("seconds", "nanos"), [(253402300800, 0), (0, -1)])
def test_invalid_timestamp_is_refused_as_before(seconds: int, nanos: int) -> None:
    event = events_pb2.OutboxEvent()
    event.occurred_at.seconds = seconds
    event.occurred_at.nanos = nanos
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        rules.timestamp(event, "occurred_at")


def test_unset_timestamp_is_none() -> None:
    assert rules.timestamp(events_pb2.OutboxEvent(), "occurred_at") is None
