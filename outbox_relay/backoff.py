"""Backoff: how long a failed event waits, and how long the whole relay waits
while a database is unreachable. Both are tenacity wait strategies; the
relay stores the event's next attempt time instead of sleeping in a retry
decorator, so a waiting event never holds a batch or a lock."""

from __future__ import annotations

import tenacity

from outbox_relay.settings import RelaySettings

# However long the event backoff may grow, a relay waiting out an outage
# looks again at least this often, so recovery is noticed soon.
OUTAGE_MAX_WAIT_SECONDS = 30.0


def _wait_for_attempt(strategy: tenacity.wait.wait_base, attempt: int) -> float:
    state = tenacity.RetryCallState(
        retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={}
    )
    state.attempt_number = max(attempt, 1)
    return float(strategy(state))


class EventBackoff:
    """Exponential backoff with jitter between two attempts at one event."""

    def __init__(self, settings: RelaySettings) -> None:
        self._strategy = tenacity.wait_exponential_jitter(
            multiplier=settings.retry_initial_seconds,
            max=settings.retry_max_seconds,
            jitter=settings.retry_initial_seconds,
        )
        self._max = settings.retry_max_seconds

    def seconds_after(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed attempt."""
        return min(_wait_for_attempt(self._strategy, attempts), self._max)


class OutageBackoff:
    """Exponential, capped backoff of the whole relay during an outage; it
    counts consecutive failures and starts again after a success."""

    def __init__(self, settings: RelaySettings) -> None:
        self._max = min(settings.retry_max_seconds, OUTAGE_MAX_WAIT_SECONDS)
        self._strategy = tenacity.wait_exponential_jitter(
            multiplier=settings.retry_initial_seconds,
            max=self._max,
            jitter=settings.retry_initial_seconds,
        )
        self.failures = 0

    def next_wait(self) -> float:
        self.failures += 1
        return min(_wait_for_attempt(self._strategy, self.failures), self._max)

    def reset(self) -> None:
        self.failures = 0
