"""The write path's statements run on psycopg directly on PostgreSQL
(server/store/driver.py): the database must see exactly what SQLAlchemy
would have sent, errors must surface as SQLAlchemy's, and a statement
without a fixed text must still run."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from processflow.db import create_engine
from processflow.v1 import processflow_service_pb2 as pb
from server import schema
from server.errors import ProcessFlowError
from server.store import Store, driver, idempotency
from server.store.sessions import lock_statement
from server.store.steps import insert_step_statement
from tests.integration.store_helpers import T

NOW = dt.datetime(2026, 12, 4, 12, 0, 0)


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(
            schema.sessions.insert(),
            {
                "session_id": "s1",
                "tenant_id": "",
                "user_id": "u",
                "query": "q",
                "query_type": "enhanced",
                "status": "running",
                "start_time": NOW,
                "start_fingerprint": "f",
                "event_sequence": 3,
                "metadata": {"a": [1, 2]},
                "tables_retrieved": ["orders"],
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
    yield engine
    engine.dispose()


def step_values(step_id: str, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "session_id": "s1",
        "step_id": step_id,
        "step_type": "auth",
        "parent_step_id": None,
        "name": "Auth",
        "description": None,
        "step_order": 1,
        "status": "completed",
        "start_time": NOW,
        "end_time": NOW,
        "duration_ms": 0,
        "confidence": Decimal("0.9000"),
        "input_data": None,
        "output_data": "ok 100%",
        "error_message": None,
        "metadata": None,
        "retry_count": 0,
        "tokens_used": 7,
        "finished_event_written": 1,
        "finished_sequence": 2,
        "finished_event": b"\x00\x01\xff",
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return values


def stored_step(connection: sa.Connection, step_id: str) -> dict[str, Any]:
    row = (
        connection.execute(
            sa.select(
                schema.steps,
                # JSON null and SQL NULL read back alike: tell them apart.
                schema.steps.c.metadata.is_(None).label("metadata_is_null"),
            ).where(schema.steps.c.step_id == step_id)
        )
        .mappings()
        .one()
    )
    return {k: v for k, v in row.items() if k not in ("id", "step_id")}


@pytest.mark.parametrize(
    "changes",
    [{}, {"metadata": {"k": "v", "n": [1, None]}}, {"finished_event": None}],
    ids=["no-metadata", "metadata", "no-event"],
)
def test_driver_writes_what_sqlalchemy_writes(
    engine: sa.Engine, changes: dict[str, Any]
) -> None:
    with engine.begin() as connection:
        connection.execute(insert_step_statement(), step_values("by-sa", **changes))
        driver.execute(
            connection, insert_step_statement(), [step_values("by-driver", **changes)]
        )
    with engine.connect() as connection:
        assert stored_step(connection, "by-driver") == stored_step(connection, "by-sa")


def test_driver_rows_read_like_sqlalchemy_rows(engine: sa.Engine) -> None:
    statement = lock_statement(True, (schema.sessions.c.metadata,))
    parameters = {"b_session_id": "s1", "b_tenant_id": "", "b_bump": 0}
    with engine.begin() as connection:
        by_sa = connection.execute(statement, parameters).one()._asdict()
        (row,) = driver.fetch_rows(connection, statement, parameters)
        assert row._asdict() == by_sa
        assert row.event_sequence == 3 and row.metadata == {"a": [1, 2]}

        missing = {**parameters, "b_session_id": "nope"}
        locked, after = driver.fetch_together(
            connection,
            [(statement, missing), (sa.select(schema.sessions.c.user_id), {})],
        )
        assert locked == [] and [r.user_id for r in after] == ["u"]


def test_statement_without_fixed_text_runs_through_sqlalchemy(
    engine: sa.Engine,
) -> None:
    ids = sa.bindparam("ids", expanding=True)
    statement = sa.select(schema.sessions.c.session_id).where(
        schema.sessions.c.session_id.in_(ids)
    )
    assert driver.driver_form(engine.dialect, statement, ("ids",)) is None
    with engine.connect() as connection:
        rows = driver.fetch_rows(connection, statement, {"ids": ["s1", "s2"]})
    assert [row.session_id for row in rows] == ["s1"]


def test_driver_errors_are_sqlalchemy_errors(engine: sa.Engine) -> None:
    record = {
        "request_id": "r1",
        "tenant_id": "",
        "method": "StartSession",
        "fingerprint": "f",
        "response": b"",
        "created_at": NOW,
    }
    statement = idempotency._insert_record_statement()
    with engine.begin() as connection:
        driver.execute(connection, statement, [record])
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as connection:
        driver.execute(connection, statement, record)
    assert idempotency.is_duplicate_key(caught.value, [schema.requests])


def test_connections_go_back_to_the_pool_with_psycopg_starting_transactions(
    pg_url: str,
) -> None:
    # A write's first statements carry its BEGIN, psycopg being told not to
    # send one (autocommit) until the transaction ends: whichever way the
    # write ends, the pooled connection must start transactions again, or
    # the next Ingest would commit statement by statement.
    store = Store.connect(pg_url, pool_size=1)
    try:
        endings: list[Callable[[], object]] = [
            lambda: store.start_session(
                T, pb.StartSessionRequest(request_id="r1", session_id="s", user_id="u")
            ),
            # The lock finds no session: NotFound after the first round trip.
            lambda: store.record_step(
                T,
                pb.RecordStepRequest(
                    session_id="missing", step_id="a", step_type="auth"
                ),
            ),
            # The request record's key is taken: the final pipeline fails.
            lambda: store.start_session(
                T, pb.StartSessionRequest(request_id="r1", session_id="t", user_id="u")
            ),
        ]
        for ending in endings:
            with contextlib.suppress(ProcessFlowError):
                ending()
            with store.engine.connect() as connection:
                dbapi = connection.connection.dbapi_connection
                assert isinstance(dbapi, psycopg.Connection)
                assert dbapi.autocommit is False
                assert (
                    dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                )
    finally:
        store.close()


def test_rows_naming_different_columns_are_left_to_sqlalchemy(
    engine: sa.Engine,
) -> None:
    # Compiled for the first row's names, a later row without one of them
    # would be bound NULL where SQLAlchemy refuses it.
    rows = [
        step_values("first", description="d"),
        {k: v for k, v in step_values("second").items() if k != "description"},
    ]
    with (
        pytest.raises(sa.exc.StatementError, match="description"),
        engine.begin() as connection,
    ):
        driver.execute(connection, insert_step_statement(), rows)
