"""Change feed: wakes watchers (WatchSession, WaitForCoverage) when a session
may have changed.

Three sources feed it: the store's commit listeners (writes by this
process), and on PostgreSQL a LISTEN on 'processflow_outbox' (writes by any
server) and 'processflow_applied' (the relay settled events). Watchers
re-read the session when woken and also every poll interval, so a lost
notification (or SQLite, which has none) costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

from server.store.transaction import APPLIED_CHANNEL, NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class Subscription:
    """One watcher's wake-up flag, set from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def fire(self) -> None:
        # A closed loop means nobody waits any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_seconds: float) -> bool:
        """Waits for a wake-up or the timeout; True when woken."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout_seconds)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


class ChangeFeed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[Subscription]] = {}
        self.closed = False

    def notify(self, session_ids: Iterable[str]) -> None:
        """Thread-safe; usable as a Store commit listener."""
        with self._lock:
            woken = [
                sub for sid in session_ids for sub in self._subscriptions.get(sid, ())
            ]
        for sub in woken:
            sub.fire()

    @contextmanager
    def subscribe(self, session_id: str) -> Iterator[Subscription]:
        sub = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subscriptions.setdefault(session_id, set()).add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                subs = self._subscriptions.get(session_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subscriptions[session_id]

    def close(self) -> None:
        """Wakes every watcher so that it can see ``closed`` and end."""
        self.closed = True
        with self._lock:
            subs = [sub for group in self._subscriptions.values() for sub in group]
        for sub in subs:
            sub.fire()


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresListener:
    """A thread that LISTENs on the outbox channels and feeds a ChangeFeed."""

    def __init__(
        self, database_url: str, feed: ChangeFeed, *, retry_seconds: float = 2.0
    ) -> None:
        self._url = libpq_url(database_url)
        self._feed = feed
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="processflow-listen", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_seconds: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_seconds)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg.Error as error:
                log.warning(
                    "notification listener lost its connection: %s",
                    type(error).__name__,
                    extra={"event": "listener_disconnected"},
                )
                self._stop.wait(self._retry_seconds)

    def _listen(self) -> None:
        with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            conn.execute(f"LISTEN {APPLIED_CHANNEL}")
            while not self._stop.is_set():
                # Short timeouts so that stop() is noticed promptly.
                for notification in conn.notifies(timeout=0.5):
                    self._feed.notify((notification.payload,))
