"""The Prometheus endpoint exposes every family, the backlog gauge follows
the outbox, and the server and relay log one stable line per call, per
batch, per retry and per dead letter."""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from processflow import metrics
from processflow.db import is_sqlite
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server import schema
from server.store import Store
from tests.integration.coverage_data import drain, relay_for, write_session
from tests.support.polling import wait_for
from tests.support.server import in_process_server

FAMILIES = {
    "processflow_rpc_requests",
    "processflow_rpc_duration_seconds",
    "processflow_outbox_backlog",
    "processflow_outbox_oldest_pending_age_seconds",
    "processflow_outbox_dead_letters",
    "processflow_relay_events",
    "processflow_relay_batch_size",
    "processflow_relay_batch_duration_seconds",
    "processflow_relay_wakeups",
}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5
    ) as answer:
        text = answer.read().decode()
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def families(port: int) -> set[str]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5
    ) as answer:
        text = answer.read().decode()
    return {family.name for family in text_string_to_metric_families(text)}


def value(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    yield store
    store.close()


@pytest.fixture
def endpoint(store: Store) -> Iterator[int]:
    server = metrics.start_metrics_server("127.0.0.1:0", store.engine)
    yield server.port
    server.close()
    metrics.unwatch_outbox()


def test_backlog_gauges_follow_the_outbox(
    store: Store, endpoint: int, database_url: str
) -> None:
    assert value(endpoint, "processflow_outbox_backlog") == 0
    assert value(endpoint, "processflow_outbox_oldest_pending_age_seconds") == 0
    write_session(store, "m1")
    write_session(store, "m2", complete=False)
    with store.engine.connect() as connection:
        events = connection.execute(
            sa.select(sa.func.count()).select_from(schema.outbox)
        ).scalar_one()
    assert value(endpoint, "processflow_outbox_backlog") == events == 13
    assert value(endpoint, "processflow_outbox_oldest_pending_age_seconds") >= 0
    with store.engine.begin() as connection:
        connection.execute(
            schema.outbox.update()
            .where(schema.outbox.c.session_id == "m2", schema.outbox.c.sequence == 1)
            .values(status="dead")
        )
    assert value(endpoint, "processflow_outbox_dead_letters") == 1
    with relay_for(database_url) as relay:
        drain(relay)
    # m2's later events wait behind its dead letter.
    assert value(endpoint, "processflow_outbox_backlog") == 5
    assert value(endpoint, "processflow_outbox_dead_letters") == 1


def test_every_family_is_exposed_and_counts(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with in_process_server(database_url, metrics_listen="127.0.0.1:0") as server:
        assert server.app is not None and server.app.metrics is not None
        port = server.app.metrics.port
        ok = (
            "processflow_rpc_requests_total",
            {"method": "StartSession", "code": "OK"},
        )
        before = value(port, ok[0], **ok[1])
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProcessFlowServiceStub(channel)
            stub.StartSession(
                pb.StartSessionRequest(session_id="r1", user_id="u", query="q")
            )
            with pytest.raises(grpc.RpcError):
                stub.StartSession(pb.StartSessionRequest(session_id="r2", user_id=""))
        assert value(port, ok[0], **ok[1]) == before + 1
        assert (
            value(
                port,
                "processflow_rpc_requests_total",
                method="StartSession",
                code="INVALID_ARGUMENT",
            )
            >= 1
        )
        assert value(port, "processflow_outbox_backlog") == 1

        applied = (
            "processflow_relay_events_total",
            {"sink": "PromptSuccessTracking", "outcome": "applied"},
        )
        applied_before = value(port, applied[0], **applied[1])
        batches_before = value(port, "processflow_relay_batch_size_count")
        polls_before = value(port, "processflow_relay_wakeups_total", source="poll")
        woken_before = value(
            port, "processflow_relay_wakeups_total", source="in_process"
        )
        notified_before = value(
            port, "processflow_relay_wakeups_total", source="notification"
        )
        with relay_for(database_url, poll_interval_seconds=0.05) as relay:
            stop = threading.Event()
            thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
            thread.start()
            try:
                wait_for(
                    lambda: value(port, "processflow_outbox_backlog") == 0, timeout=10
                )
                wait_for(
                    lambda: (
                        value(port, "processflow_relay_wakeups_total", source="poll")
                        > polls_before
                    ),
                    timeout=10,
                )

                def woken_in_process() -> bool:
                    # Wake until the relay counts it: a wake-up that lands
                    # just before the relay wakes anyway is merged into it.
                    relay.wake()
                    woken = value(
                        port, "processflow_relay_wakeups_total", source="in_process"
                    )
                    return woken > woken_before

                wait_for(woken_in_process, timeout=10, interval=0.1)
                if not is_sqlite(database_url):
                    with grpc.insecure_channel(server.address) as channel:
                        pb_grpc.ProcessFlowServiceStub(channel).StartSession(
                            pb.StartSessionRequest(
                                session_id="r3", user_id="u", query="q"
                            )
                        )
                    wait_for(
                        lambda: (
                            value(
                                port,
                                "processflow_relay_wakeups_total",
                                source="notification",
                            )
                            > notified_before
                        ),
                        timeout=10,
                    )
            finally:
                stop.set()
                thread.join(10)
        assert value(port, applied[0], **applied[1]) > applied_before
        assert value(port, "processflow_relay_batch_size_count") > batches_before
        assert value(port, "processflow_relay_batch_duration_seconds_count") > 0
        assert families(port) >= FAMILIES

    events = Counter(getattr(r, "event", None) for r in caplog.records)
    finished = [
        r for r in caplog.records if getattr(r, "event", None) == "rpc_finished"
    ]
    assert {(r.levelname, r.method, r.code) for r in finished} >= {  # type: ignore[attr-defined]
        ("INFO", "StartSession", "OK"),
        ("INFO", "StartSession", "INVALID_ARGUMENT"),
    }
    assert events["outbox_batch_applied"] >= 1
    batch = next(
        r for r in caplog.records if getattr(r, "event", None) == "outbox_batch_applied"
    )
    assert batch.levelname == "INFO"


def test_retries_warn_and_dead_letters_are_errors(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_session(store, "poison", calls=0, complete=False)
    with store.engine.begin() as connection:
        connection.execute(
            schema.outbox.update()
            .where(
                schema.outbox.c.session_id == "poison", schema.outbox.c.sequence == 1
            )
            .values(payload=b"\x00not a protobuf")
        )
    dead = (
        "processflow_relay_events_total",
        {"sink": "none", "outcome": "dead_lettered"},
    )
    retried = ("processflow_relay_events_total", {"sink": "none", "outcome": "retried"})
    registry_value = metrics.REGISTRY.get_sample_value
    dead_before = registry_value(*dead) or 0.0
    retried_before = registry_value(*retried) or 0.0
    caplog.set_level(logging.INFO)
    with relay_for(
        database_url, max_attempts=2, retry_initial_seconds=0.01, retry_max_seconds=0.02
    ) as relay:
        wait_for(
            lambda: (
                relay.run_once() == 0 and (registry_value(*dead) or 0) > dead_before
            ),
            timeout=10,
            message="the poison event to be dead-lettered",
        )
    assert (registry_value(*retried) or 0) == retried_before + 1
    levels = {
        getattr(r, "event", None): r.levelname
        for r in caplog.records
        if getattr(r, "event", "").startswith("outbox_")
    }
    assert levels["outbox_event_retry"] == "WARNING"
    assert levels["outbox_event_dead_lettered"] == "ERROR"
    assert levels["outbox_batch_applied"] == "INFO"
