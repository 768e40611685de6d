"""Outbox event ids: RFC 9562 version 7 UUIDs that sort by the time they
were made, so that the indexes keyed by them grow at one end."""

from __future__ import annotations

import time
import uuid

import pytest

from server.store import outbox


def test_an_event_id_is_a_version_7_uuid_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    text = outbox.new_event_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(text)
    assert str(parsed) == text and len(text) == 36
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= int(parsed.hex[:12], 16) <= after


def test_event_ids_sort_by_the_millisecond_they_were_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1_700_000_000_002, 1_700_000_000_001, 1_700_000_000_003])
    monkeypatch.setattr(outbox.time, "time_ns", lambda: next(clock) * 1_000_000)
    second, first, third = (outbox.new_event_id() for _ in range(3))
    assert sorted([third, first, second]) == [first, second, third]


def test_event_ids_made_in_one_millisecond_differ() -> None:
    ids = {outbox.new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000
