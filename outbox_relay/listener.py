"""Wake-up on PostgreSQL: a dedicated connection LISTENs on the outbox channel
and wakes the relay on every notification.

Notifications are only a shortcut. The relay also polls, so a notification
lost while this connection was down costs at most one poll interval; after
reconnecting the listener wakes the relay once, in case it missed one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from processflow.db import normalize_url

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "processflow_outbox"
APPLIED_CHANNEL = "processflow_applied"


def libpq_conninfo(database_url: str) -> str:
    """The SQLAlchemy URL as a libpq connection URI."""
    url = make_url(normalize_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class OutboxListener:
    """Runs LISTEN in a background thread and calls ``on_wake`` per notification."""

    def __init__(
        self,
        database_url: str,
        on_wake: Callable[[], None],
        *,
        channel: str = OUTBOX_CHANNEL,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self._conninfo = libpq_conninfo(database_url)
        self._on_wake = on_wake
        self._channel = channel
        self._reconnect_seconds = reconnect_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="outbox-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=10
                ) as connection:
                    connection.execute(f"LISTEN {self._channel}")
                    self.listening.set()
                    self._on_wake()
                    while not self._stop.is_set():
                        for _ in connection.notifies(timeout=0.5):
                            self._on_wake()
            except psycopg.Error as error:
                self.listening.clear()
                log.debug(
                    "outbox listener disconnected",
                    extra={
                        "event": "outbox_listener_disconnected",
                        "error": type(error).__name__,
                    },
                )
                self._stop.wait(self._reconnect_seconds)
        self.listening.clear()
