"""The relay: claims outbox events, applies them to the legacy tables exactly
once, and settles them.

One batch is one outbox transaction that holds the claimed rows' locks from
the claim to the acknowledgement:

- legacy tables in the same database: legacy rows, ledger rows and the
  acknowledgement commit together, on one connection. The claimed events
  are marked applied first and the few that were not (failed, or waiting
  behind a failure) are put back before the commit, so no other relay ever
  sees the difference; the counters, the rows every batch shares, are then
  locked only for the last statements of the transaction;
- legacy tables elsewhere: the legacy transaction commits rows and ledger
  first, then the outbox transaction marks the events applied. A crash in
  between leaves the events pending; their redelivery finds the ledger rows
  and has no second effect.

A database that cannot be reached is an outage, not a fault of the events:
the batch rolls back without counting attempts and the whole relay backs
off. The loop waits for a wake-up (LISTEN on PostgreSQL, ``wake()`` in
process) or the poll interval, so a lost wake-up costs latency, never data.

On PostgreSQL ``run`` settles WORKERS batches at once, each in its own
thread on its own connections, exactly as that many relays would: the row
locks keep their claims apart and their sessions' order intact. One batch's
Python work (decoding, the rules) then overlaps the other's time in the
database, which on its own leaves either side idle half the time.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from outbox_relay import outbox_store, relay_metrics
from outbox_relay.backoff import EventBackoff, OutageBackoff
from outbox_relay.batch import (
    BatchOutcome,
    apply_batch,
    describe_error,
    is_conflict,
    is_connection_error,
)
from outbox_relay.listener import APPLIED_CHANNEL, OutboxListener
from outbox_relay.outbox_store import ClaimedEvent
from outbox_relay.settings import RelaySettings, validate
from processflow.db import create_engine, is_sqlite, normalize_url, utcnow
from processflow.metrics import record_relay_wakeup

log = logging.getLogger(__name__)

# Most prune statements per pass, so pruning a large backlog never stalls the relay.
PRUNE_STATEMENTS_PER_PASS = 50
# Batches settled at once on PostgreSQL. Two keep both the relay's Python
# and the database busy; more only queue on the same counter rows. SQLite
# serialises writers, so there a second one would only wait.
WORKERS = 2


class DatabaseUnavailable(Exception):
    """A database could not be reached; ``side`` says which."""

    def __init__(self, side: str, cause: BaseException) -> None:
        super().__init__(f"{side} database unreachable: {describe_error(cause)}")
        self.side = side
        self.cause = cause


class BatchConflict(Exception):
    """The batch was rolled back by a deadlock or lock timeout; try again."""


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    applied: int
    failed: int


class Relay:
    """Moves outbox events into the legacy tables. ``run_once`` settles one
    batch; ``run`` loops until its stop event is set."""

    def __init__(self, settings: RelaySettings) -> None:
        validate(settings)
        self.settings = settings
        self.shared_database = normalize_url(
            settings.effective_legacy_database_url
        ) == normalize_url(settings.database_url)
        self.workers = 1 if is_sqlite(settings.database_url) else WORKERS
        # Each worker holds one outbox connection; pruning takes one more.
        self._outbox = create_engine(settings.database_url, pool_size=self.workers + 1)
        self._legacy = (
            self._outbox
            if self.shared_database
            else create_engine(
                settings.effective_legacy_database_url, pool_size=self.workers
            )
        )
        self._disabled = frozenset(settings.disabled_sinks)
        self._event_backoff = EventBackoff(settings)
        self._wakeup = threading.Event()
        self._wake_source = "in_process"
        # Batches in flight, so that shutdown can wait for them to finish.
        self._in_flight = 0
        self._settled = threading.Condition()
        self._active: list[sa.Connection] = []
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        self._outage_reported_at: float | None = None
        self._last_prune = -math.inf
        # Set while the LISTEN connection is up (PostgreSQL, inside run()).
        self.listening = threading.Event()

    @property
    def outbox_engine(self) -> sa.Engine:
        return self._outbox

    def wake(self, source: str = "in_process") -> None:
        """Asks the loop to look at the outbox now (thread-safe)."""
        self._wake_source = source
        self._wakeup.set()

    def close(self) -> None:
        self._outbox.dispose()
        if self._legacy is not self._outbox:
            self._legacy.dispose()

    def after_legacy_commit(self, outcome: BatchOutcome) -> None:
        """Called between the legacy commit and the outbox acknowledgement
        when the legacy tables live elsewhere; does nothing (a test seam)."""

    # One batch.

    def run_once(self) -> int:
        """Claims and settles one batch; returns the events applied. Raises
        DatabaseUnavailable when a database cannot be reached, BatchConflict
        when a deadlock or lock timeout rolled the batch back."""
        return self.settle_batch().applied

    def settle_batch(self) -> BatchResult:
        """Claims and settles one batch (thread-safe: each call uses its own
        connections)."""
        with self._settled:
            self._in_flight += 1
        try:
            return self._settle_batch()
        finally:
            with self._settled:
                self._in_flight -= 1
                self._settled.notify_all()

    def _settle_batch(self) -> BatchResult:
        started = time.monotonic()
        try:
            claimed, outcome = self._claim_apply_acknowledge()
        except Exception as error:
            if is_connection_error(error):
                side = "legacy" if self.shared_database else "outbox"
                raise DatabaseUnavailable(side, error) from error
            if is_conflict(error):
                raise BatchConflict(describe_error(error)) from error
            raise
        if outcome is None:
            return BatchResult(0, 0, 0)
        elapsed = time.monotonic() - started
        self._report(claimed, outcome, elapsed)
        relay_metrics.observe_batch(
            claimed, outcome, elapsed, self._disabled, self.settings.max_attempts
        )
        return BatchResult(len(claimed), len(outcome.applied), len(outcome.failed))

    def _claim_apply_acknowledge(
        self,
    ) -> tuple[list[ClaimedEvent], BatchOutcome | None]:
        now = utcnow()
        with self._outbox.connect() as connection:
            self._active.append(connection)
            try:
                with connection.begin():
                    events = outbox_store.claim_pending_events(
                        connection, now, self.settings.batch_size
                    )
                    if not events:
                        return events, None
                    if self.shared_database:
                        outbox_store.mark_events_applied(
                            connection, [e.id for e in events], now
                        )
                        outcome = self._apply(connection, events, now)
                        self._acknowledge(connection, outcome, now, marked=True)
                    else:
                        outcome = self._apply_on_legacy_database(events, now)
                        self.after_legacy_commit(outcome)
                        self._acknowledge(connection, outcome, now)
                return events, outcome
            finally:
                self._active.remove(connection)

    def _apply(
        self, connection: sa.Connection, events: list[ClaimedEvent], now: dt.datetime
    ) -> BatchOutcome:
        return apply_batch(connection, events, disabled_sinks=self._disabled, now=now)

    def _apply_on_legacy_database(
        self, events: list[ClaimedEvent], now: dt.datetime
    ) -> BatchOutcome:
        try:
            with self._legacy.connect() as connection:
                self._active.append(connection)
                try:
                    with connection.begin():
                        return self._apply(connection, events, now)
                finally:
                    self._active.remove(connection)
        except Exception as error:
            if is_connection_error(error):
                raise DatabaseUnavailable("legacy", error) from error
            raise

    def _acknowledge(
        self,
        connection: sa.Connection,
        outcome: BatchOutcome,
        now: dt.datetime,
        *,
        marked: bool = False,
    ) -> None:
        """Settles the batch's events in the outbox transaction. ``marked``:
        every claimed event was already marked applied; put back the ones
        that were not."""
        if marked:
            outbox_store.mark_events_pending(
                connection, [e.id for e in outcome.waiting]
            )
        else:
            outbox_store.mark_events_applied(
                connection, [e.id for e in outcome.applied], now
            )
        for event, error in outcome.failed:
            attempts = event.attempts + 1
            delay = self._event_backoff.seconds_after(attempts)
            outbox_store.record_event_failure(
                connection,
                event.id,
                attempts=attempts,
                next_attempt_at=now + _seconds(delay),
                error=error,
                dead=attempts >= self.settings.max_attempts,
            )
        sessions = sorted({event.session_id for event in outcome.applied})
        outbox_store.notify_sessions(connection, APPLIED_CHANNEL, sessions)

    def _report(
        self, claimed: list[ClaimedEvent], outcome: BatchOutcome, elapsed: float
    ) -> None:
        for event, error in outcome.failed:
            attempts = event.attempts + 1
            ids = {
                "event_id": event.event_id,
                "session_id": event.session_id,
                "sequence": event.sequence,
                "attempts": attempts,
                "error": error,
            }
            if attempts >= self.settings.max_attempts:
                log.error(
                    "event dead-lettered",
                    extra={"event": "outbox_event_dead_lettered", **ids},
                )
            else:
                log.warning(
                    "event will be retried",
                    extra={"event": "outbox_event_retry", **ids},
                )
        log.info(
            "outbox batch applied",
            extra={
                "event": "outbox_batch_applied",
                "events": len(outcome.applied),
                "sessions": len({e.session_id for e in claimed}),
                "redelivered": outcome.redelivered,
                "failed": len(outcome.failed),
                "waiting": len(outcome.waiting),
                "duration_ms": round(elapsed * 1000, 1),
            },
        )

    # Retention.

    def prune_settled_events(self) -> int:
        """Deletes settled events older than the retention, in bounded batches."""
        cutoff = utcnow() - _seconds(self.settings.retention_hours * 3600)
        limit = self.settings.retention_batch_size
        total = 0
        try:
            for _ in range(PRUNE_STATEMENTS_PER_PASS):
                with self._outbox.begin() as connection:
                    deleted = outbox_store.delete_settled_events(
                        connection, cutoff, limit
                    )
                total += deleted
                if deleted < limit:
                    break
        except Exception as error:
            if is_connection_error(error):
                raise DatabaseUnavailable("outbox", error) from error
            raise
        self._last_prune = time.monotonic()
        if total:
            log.info(
                "settled events pruned",
                extra={"event": "outbox_events_pruned", "events": total},
            )
        return total

    def _prune_if_due(self, *, idle: bool) -> None:
        # Prefer idle moments; under constant load prune anyway, less often.
        elapsed = time.monotonic() - self._last_prune
        interval = self.settings.retention_interval_seconds
        if elapsed >= interval * (1 if idle else 5):
            self.prune_settled_events()

    # The loop.

    def run(self, stop: threading.Event) -> None:
        """Settles batches until ``stop`` is set; then finishes the batches
        in flight, or rolls them back once shutdown_grace_seconds have passed."""
        listener = None
        if not is_sqlite(self.settings.database_url):
            listener = OutboxListener(
                self.settings.database_url, lambda: self.wake("notification")
            )
            self.listening = listener.listening
            listener.start()
        watchdog = threading.Thread(
            target=self._watch_for_stop,
            args=(stop,),
            name="relay-shutdown",
            daemon=True,
        )
        watchdog.start()
        helpers = [
            threading.Thread(
                target=self._work,
                args=(stop, False),
                name=f"relay-worker-{number}",
                daemon=True,
            )
            for number in range(1, self.workers)
        ]
        log.info(
            "relay started",
            extra={
                "event": "relay_started",
                "shared_database": self.shared_database,
                "workers": self.workers,
            },
        )
        try:
            for helper in helpers:
                helper.start()
            self._work(stop, True)
        finally:
            for helper in helpers:
                helper.join()
            if listener is not None:
                listener.stop()
            log.info("relay stopped", extra={"event": "relay_stopped"})

    def _work(self, stop: threading.Event, prunes: bool) -> None:
        """One worker's loop; only one worker prunes."""
        outage_backoff = OutageBackoff(self.settings)
        while not stop.is_set():
            try:
                result = self.settle_batch()
                if prunes:
                    self._prune_if_due(idle=result.claimed == 0)
            except DatabaseUnavailable as error:
                self._report_outage(error)
                stop.wait(outage_backoff.next_wait())
                continue
            except BatchConflict as error:
                log.warning(
                    "batch rolled back by a conflict; trying again",
                    extra={"event": "outbox_batch_conflict", "error": str(error)},
                )
                stop.wait(self.settings.retry_initial_seconds)
                continue
            except Exception:
                log.exception(
                    "relay batch failed", extra={"event": "outbox_batch_failed"}
                )
                stop.wait(outage_backoff.next_wait())
                continue
            outage_backoff.reset()
            self._end_outage()
            if result.claimed == 0:
                # Cleared only once consumed: a wake-up that came while the
                # batch ran makes this wait return at once, and one that
                # comes after the clear finds a batch about to run. With two
                # workers, the one that consumes it runs the next batch, and
                # a worker that claimed something never waits at all.
                woken = self._wakeup.wait(self.settings.poll_interval_seconds)
                self._wakeup.clear()
                record_relay_wakeup(self._wake_source if woken else "poll")

    def _watch_for_stop(self, stop: threading.Event) -> None:
        stop.wait()
        self._wakeup.set()
        with self._settled:
            finished = self._settled.wait_for(
                lambda: self._in_flight == 0,
                timeout=self.settings.shutdown_grace_seconds,
            )
        if finished:
            return
        log.warning(
            "batch still running at the end of the grace period; rolling it back",
            extra={"event": "outbox_batch_cancelled"},
        )
        for connection in list(self._active):
            _cancel(connection)

    def _report_outage(self, error: DatabaseUnavailable) -> None:
        with self._outage_lock:
            self._report_outage_locked(error)

    def _report_outage_locked(self, error: DatabaseUnavailable) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        interval = self.settings.outage_report_interval_seconds
        if (
            self._outage_reported_at is None
            or now - self._outage_reported_at >= interval
        ):
            self._outage_reported_at = now
            log.warning(
                "%s database unreachable",
                error.side,
                extra={
                    "event": f"{error.side}_database_unreachable",
                    "error": describe_error(error.cause),
                    "outage_seconds": round(now - self._outage_since, 1),
                },
            )

    def _end_outage(self) -> None:
        if self._outage_since is None:
            return
        with self._outage_lock:
            since = self._outage_since
            if since is None:
                return
            log.info(
                "database reachable again",
                extra={
                    "event": "database_reachable",
                    "outage_seconds": round(time.monotonic() - since, 1),
                },
            )
            self._outage_since = None
            self._outage_reported_at = None


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def _cancel(connection: sa.Connection) -> None:
    """Aborts the statement running on ``connection`` from another thread."""
    try:
        dbapi = connection.connection.dbapi_connection
    except sa.exc.SQLAlchemyError:
        return
    for name in ("cancel_safe", "cancel", "interrupt"):
        method = getattr(dbapi, name, None)
        if callable(method):
            try:
                method()
            except Exception:
                log.debug("cancel failed", extra={"event": "outbox_cancel_failed"})
            return
