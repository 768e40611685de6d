"""Prometheus metrics of the server and the relay, and the HTTP endpoint that
serves them (``--metrics-listen HOST:PORT``).

Everything is registered in prometheus_client's default registry (which also
carries the process and Python collectors), so ``processflow dev`` -- server
and relay in one process -- exposes every family from one endpoint. Counters
and histograms are updated where things happen (the RPC interceptor, the
relay loop); the outbox gauges are computed when Prometheus scrapes, by three
cheap queries on the outbox's indexes, so that they are right whichever
process changed the outbox and cost nothing between scrapes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from processflow.db import utcnow
from server.schema import outbox

log = logging.getLogger(__name__)

RELAY_OUTCOMES = ("applied", "skipped", "retried", "dead_lettered")
WAKEUP_SOURCES = ("notification", "poll", "in_process")

RPC_REQUESTS = Counter(
    "processflow_rpc_requests",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "processflow_rpc_duration_seconds",
    "Time to handle one gRPC call, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RELAY_EVENTS = Counter(
    "processflow_relay_events",
    "Outbox events the relay settled or retried, by legacy sink and outcome "
    "(applied, skipped, retried, dead_lettered).",
    ["sink", "outcome"],
    registry=REGISTRY,
)
RELAY_BATCH_SIZE = Histogram(
    "processflow_relay_batch_size",
    "Events claimed in one relay batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
    registry=REGISTRY,
)
RELAY_BATCH_DURATION = Histogram(
    "processflow_relay_batch_duration_seconds",
    "Time to claim, apply and settle one relay batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RELAY_WAKEUPS = Counter(
    "processflow_relay_wakeups",
    "Times the relay woke up to look at the outbox, by source "
    "(notification, poll, in_process).",
    ["source"],
    registry=REGISTRY,
)


def record_rpc(method: str, code: str, seconds: float) -> None:
    """Counts one finished call; ``method`` is the short name (``StartSession``)."""
    RPC_REQUESTS.labels(method=method, code=code).inc()
    RPC_DURATION.labels(method=method).observe(seconds)


def record_relay_event(sink: str, outcome: str, count: int = 1) -> None:
    if outcome not in RELAY_OUTCOMES:
        raise ValueError(f"outcome must be one of {RELAY_OUTCOMES}, got {outcome!r}")
    RELAY_EVENTS.labels(sink=sink, outcome=outcome).inc(count)


def record_relay_batch(size: int, seconds: float) -> None:
    RELAY_BATCH_SIZE.observe(size)
    RELAY_BATCH_DURATION.observe(seconds)


def record_relay_wakeup(source: str) -> None:
    if source not in WAKEUP_SOURCES:
        raise ValueError(f"source must be one of {WAKEUP_SOURCES}, got {source!r}")
    RELAY_WAKEUPS.labels(source=source).inc()


@dataclass(frozen=True)
class OutboxFigures:
    pending: int
    oldest_pending_age_seconds: float
    dead: int


def count_pending_events(connection: sa.Connection) -> int:
    query = sa.select(sa.func.count()).where(outbox.c.status == "pending")
    return int(connection.execute(query).scalar_one())


def select_oldest_pending_created_at(connection: sa.Connection) -> object:
    # Ids grow with inserts, so the lowest pending id is (nearly) the oldest;
    # this walks the small partial index instead of sorting by created_at.
    query = (
        sa.select(outbox.c.created_at)
        .where(outbox.c.status == "pending")
        .order_by(outbox.c.id)
        .limit(1)
    )
    return connection.execute(query).scalar_one_or_none()


def count_dead_events(connection: sa.Connection) -> int:
    query = sa.select(sa.func.count()).where(outbox.c.status == "dead")
    return int(connection.execute(query).scalar_one())


def read_outbox_figures(engine: sa.Engine) -> OutboxFigures:
    with engine.connect() as connection:
        pending = count_pending_events(connection)
        oldest = select_oldest_pending_created_at(connection)
        dead = count_dead_events(connection)
    age = 0.0
    if oldest is not None:
        age = max(0.0, (utcnow() - oldest).total_seconds())  # type: ignore[operator]
    return OutboxFigures(pending, age, dead)


class OutboxCollector(Collector):
    """Backlog gauges, read from the outbox at scrape time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Describing without querying keeps registration free of database work.
        yield from self._families(None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            figures = read_outbox_figures(self.engine)
        except sa.exc.SQLAlchemyError as error:
            log.warning(
                "cannot read the outbox for metrics: %s",
                type(error).__name__,
                extra={"event": "metrics_outbox_unreadable"},
            )
            return
        yield from self._families(figures)

    @staticmethod
    def _families(figures: OutboxFigures | None) -> Iterator[GaugeMetricFamily]:
        families = (
            ("processflow_outbox_backlog", "Outbox events waiting for the relay."),
            (
                "processflow_outbox_oldest_pending_age_seconds",
                "Age of the oldest event waiting for the relay; 0 with none.",
            ),
            (
                "processflow_outbox_dead_letters",
                "Dead-lettered outbox events waiting for an operator.",
            ),
        )
        values = (
            (figures.pending, figures.oldest_pending_age_seconds, figures.dead)
            if figures is not None
            else (None, None, None)
        )
        for (name, text), value in zip(families, values, strict=True):
            family = GaugeMetricFamily(name, text)
            if value is not None:
                family.add_metric([], value)
            yield family


_lock = threading.Lock()
_outbox_collector: OutboxCollector | None = None


def watch_outbox(engine: sa.Engine) -> OutboxCollector | None:
    """Exposes the backlog gauges for ``engine``'s outbox, once per process
    (server and relay share it under ``dev``); returns the collector when this
    call registered it."""
    global _outbox_collector
    with _lock:
        if _outbox_collector is not None:
            return None
        _outbox_collector = OutboxCollector(engine)
        REGISTRY.register(_outbox_collector)
        return _outbox_collector


def unwatch_outbox(collector: OutboxCollector | None = None) -> None:
    """Removes the backlog gauges (only ``collector``'s, when given)."""
    global _outbox_collector
    with _lock:
        if _outbox_collector is None:
            return
        if collector is not None and collector is not _outbox_collector:
            return
        REGISTRY.unregister(_outbox_collector)
        _outbox_collector = None


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6); port 0 picks a free port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-listen: expected HOST:PORT, got {listen!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


class MetricsServer:
    """The ``/metrics`` HTTP endpoint, served from a daemon thread."""

    def __init__(
        self,
        httpd: WSGIServer,
        thread: threading.Thread,
        collector: OutboxCollector | None = None,
    ) -> None:
        self._httpd = httpd
        self._thread = thread
        self._collector = collector

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self._collector is not None:
            unwatch_outbox(self._collector)


def start_metrics_server(listen: str, engine: sa.Engine | None = None) -> MetricsServer:
    """Serves every metric on ``listen``; with ``engine``, the outbox gauges too."""
    host, port = parse_listen(listen)
    collector = watch_outbox(engine) if engine is not None else None
    try:
        httpd, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError:
        if collector is not None:
            unwatch_outbox(collector)
        raise
    server = MetricsServer(httpd, thread, collector)
    log.info(
        "metrics endpoint listening on %s:%d",
        host,
        server.port,
        extra={"event": "metrics_listening", "port": server.port},
    )
    return server
