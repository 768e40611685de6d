"""Statements on the legacy database: the applied-event ledger, the legacy
rows the rules ask for, and the TokenUsageAnalytics counters.

Effects of many events are executed together, in an order that keeps the
outcome of applying them one by one:

- inserts first, parents before children, one statement per table;
- then updates: the updates of one row are merged in Python first (later
  values win, as they would in sequence order; every update sets constants),
  so each row is updated once, and rows with the same columns go together.
  A row found by a unique key and inserted by the same call takes its
  updates in the insert instead;
- then token usage, merged per key, one upsert per key.

Session rows are only updated by later events of the session that inserted
them, so updates after inserts is their sequence order.

On PostgreSQL each of those is one set-based statement for the whole batch
(outbox_relay.legacy_bulk). Every other engine uses the portable statements
here: executemany per table and update shape, and the counters upserted so
that they are right with several relays at once: UPDATE first; when no row
matched, INSERT inside a savepoint; when that INSERT hits the unique key
(another relay inserted the row meanwhile), roll back to the savepoint and
UPDATE again.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa

from outbox_relay import legacy_bulk
from outbox_relay import legacy_schema as ls
from outbox_relay.pg_arrays import array_parameter
from outbox_relay.rules import (
    Effect,
    RowInsert,
    RowUpdate,
    TokenUsageIncrement,
    token_usage_id,
)

# Parents before children (PromptConstructionSteps references the traces).
INSERT_ORDER = (
    ls.prompt_success_tracking.name,
    ls.prompt_construction_traces.name,
    ls.prompt_construction_steps.name,
    ls.llm_usage_logs.name,
)
_TABLES = ls.metadata.tables
_ledger = ls.applied_events
_usage = ls.token_usage_analytics
_contributions = ls.token_usage_contributions

# Columns that identify one row at most (primary or unique key of their
# own). An update of such a row inserted earlier in the same batch is folded
# into the insert: inserting the updated values leaves the same table as
# inserting, then updating the one row the key matches.
_UNIQUE_COLUMNS: dict[str, tuple[str, ...]] = {
    table.name: tuple(
        column.name
        for column in table.c
        if column.unique or (column.primary_key and len(table.primary_key.columns) == 1)
    )
    for table in ls.LEGACY_TABLES
}

UsageKey = tuple[str, dt.date, str, str]
# (table, key column, key) of a row that updates address.
RowKey = tuple[str, str, Any]


def set_based(connection: sa.Connection) -> bool:
    """Whether the batch statements of legacy_bulk apply on ``connection``."""
    return connection.dialect.name == "postgresql"


def select_applied_event_ids(
    connection: sa.Connection, event_ids: Sequence[str]
) -> set[str]:
    if not event_ids:
        return set()
    c = _ledger.c
    if set_based(connection):
        # One parameter, one statement text, whatever the batch size.
        ids = array_parameter("ids", event_ids, sa.Text())
        condition = c.event_id == sa.any_(ids)
    else:
        condition = c.event_id.in_(event_ids)
    rows = connection.execute(sa.select(c.event_id).where(condition))
    return {row.event_id for row in rows}


def insert_applied_events(
    connection: sa.Connection, rows: Sequence[dict[str, Any]]
) -> None:
    insert_rows(connection, _ledger, rows)


def insert_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> None:
    if not rows:
        return
    if set_based(connection):
        for group in _by_columns(rows):
            legacy_bulk.insert_rows(connection, table, group)
        return
    connection.execute(sa.insert(table), list(rows))


def _by_columns(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.values())


def execute_effects(
    connection: sa.Connection,
    effects: Iterable[Effect],
    *,
    portable: bool = False,
) -> None:
    """Executes the effects of one or more events (in sequence order within
    each session), in an order that keeps the outcome of applying them one
    by one. ``portable`` uses the statements for engines other than
    PostgreSQL whatever the engine (to compare the two)."""
    inserts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    inserted: dict[RowKey, dict[str, Any]] = {}
    updates: dict[RowKey, dict[str, Any]] = {}
    usage: dict[UsageKey, TokenUsageIncrement] = {}
    for effect in effects:
        if isinstance(effect, RowInsert):
            values = dict(effect.values)
            inserts[effect.table].append(values)
            for column in _UNIQUE_COLUMNS.get(effect.table, ()):
                if column in values:
                    inserted[effect.table, column, values[column]] = values
        elif isinstance(effect, RowUpdate):
            row = (effect.table, effect.key_column, effect.key)
            target = inserted.get(row)
            if target is None:
                target = updates.setdefault(row, {})
            target.update(effect.values)
        else:
            earlier = usage.get(effect.key)
            usage[effect.key] = earlier.merged(effect) if earlier else effect

    bulk = set_based(connection) and not portable
    for table in INSERT_ORDER:
        rows = inserts.get(table, [])
        if bulk:
            insert_rows(connection, _TABLES[table], rows)
        elif rows:
            connection.execute(sa.insert(_TABLES[table]), rows)
    for (table, key_column, columns), group in _update_groups(updates).items():
        if not bulk or not legacy_bulk.update_rows(
            connection, _TABLES[table], key_column, columns, group
        ):
            _update_rows(connection, table, key_column, columns, group)
    # One lock order for every relay: no deadlock between two of them.
    increments = [usage[key] for key in sorted(usage)]
    if increments and not (bulk and _upsert_token_usage_set(connection, increments)):
        for increment in increments:
            upsert_token_usage(connection, increment)


def _update_groups(
    updates: dict[RowKey, dict[str, Any]],
) -> dict[tuple[str, str, tuple[str, ...]], list[tuple[Any, dict[str, Any]]]]:
    """Merged row updates by (table, key column, columns set)."""
    groups: dict[
        tuple[str, str, tuple[str, ...]], list[tuple[Any, dict[str, Any]]]
    ] = {}
    for (table, key_column, key), values in updates.items():
        shape = (table, key_column, tuple(sorted(values)))
        groups.setdefault(shape, []).append((key, values))
    return groups


def _update_rows(
    connection: sa.Connection,
    table_name: str,
    key_column: str,
    columns: tuple[str, ...],
    group: list[tuple[Any, dict[str, Any]]],
) -> None:
    table = _TABLES[table_name]
    statement = (
        sa.update(table)
        .where(table.c[key_column] == sa.bindparam("k_key"))
        .values({name: sa.bindparam(f"v_{name}") for name in columns})
    )
    params = [
        {"k_key": key, **{f"v_{k}": v for k, v in values.items()}}
        for key, values in group
    ]
    connection.execute(statement, params)


def _upsert_token_usage_set(
    connection: sa.Connection, increments: Sequence[TokenUsageIncrement]
) -> bool:
    return legacy_bulk.upsert_token_usage(
        connection,
        [token_usage_row(increment) for increment in increments],
        [token_usage_contribution_row(increment) for increment in increments],
    )


def _as_decimal(connection: sa.Connection, expression: Any) -> Any:
    # SQLite divides integers as integers and has no DECIMAL type: REAL it is.
    if connection.dialect.name == "sqlite":
        return expression * sa.literal_column("1.0")
    return sa.cast(expression, sa.Numeric(24, 8))


def update_token_usage(connection: sa.Connection, usage: TokenUsageIncrement) -> int:
    """Adds ``usage`` to its existing row; returns the rows matched (0 or 1).

    The averages come first in the SET list and are computed from the old
    totals plus the increment: MySQL and MariaDB evaluate SET assignments left
    to right (a later one sees the earlier ones), PostgreSQL and SQLite all
    against the old row, so this order gives the same answer on each.
    """
    c = _usage.c
    requests = c.TotalRequests + usage.requests
    tokens = c.TotalTokensUsed + usage.tokens
    total_cost = c.TotalCost + usage.cost
    statement = (
        sa.update(_usage)
        .where(
            c.UserId == usage.user_id,
            c.Date == usage.usage_date,
            c.RequestType == usage.request_type,
            c.IntentType == usage.intent_type,
        )
        .ordered_values(
            (
                c.AverageTokensPerRequest,
                sa.func.round(_as_decimal(connection, tokens) / requests, 2),
            ),
            (
                c.AverageCostPerRequest,
                sa.func.round(_as_decimal(connection, total_cost) / requests, 6),
            ),
            (c.TotalRequests, requests),
            (c.TotalTokensUsed, tokens),
            (c.TotalCost, total_cost),
            (c.UpdatedAt, usage.at),
        )
    )
    return connection.execute(statement).rowcount


def token_usage_row(usage: TokenUsageIncrement) -> dict[str, Any]:
    """The TokenUsageAnalytics row of a key that had none before ``usage``."""
    return {
        "Id": token_usage_id(*usage.key),
        "UserId": usage.user_id,
        "Date": usage.usage_date,
        "RequestType": usage.request_type,
        "IntentType": usage.intent_type,
        "TotalRequests": usage.requests,
        "TotalTokensUsed": usage.tokens,
        "TotalCost": usage.cost,
        "AverageTokensPerRequest": _average(
            Decimal(usage.tokens), usage.requests, "0.01"
        ),
        "AverageCostPerRequest": _average(usage.cost, usage.requests, "0.000001"),
        "CreatedAt": usage.first_at,
        "UpdatedAt": usage.at,
    }


def insert_token_usage(connection: sa.Connection, usage: TokenUsageIncrement) -> None:
    connection.execute(sa.insert(_usage).values(token_usage_row(usage)))


def update_token_usage_contribution(
    connection: sa.Connection, usage: TokenUsageIncrement
) -> int:
    c = _contributions.c
    statement = (
        sa.update(_contributions)
        .where(
            c.user_id == usage.user_id,
            c.usage_date == usage.usage_date,
            c.request_type == usage.request_type,
            c.intent_type == usage.intent_type,
        )
        .values(
            total_requests=c.total_requests + usage.requests,
            total_tokens=c.total_tokens + usage.tokens,
            total_cost=c.total_cost + usage.cost,
            updated_at=usage.at,
        )
    )
    return connection.execute(statement).rowcount


def token_usage_contribution_row(usage: TokenUsageIncrement) -> dict[str, Any]:
    """ProcessFlow's contribution row of a key that had none before ``usage``."""
    return {
        "user_id": usage.user_id,
        "usage_date": usage.usage_date,
        "request_type": usage.request_type,
        "intent_type": usage.intent_type,
        "total_requests": usage.requests,
        "total_tokens": usage.tokens,
        "total_cost": usage.cost,
        "updated_at": usage.at,
    }


def insert_token_usage_contribution(
    connection: sa.Connection, usage: TokenUsageIncrement
) -> None:
    connection.execute(
        sa.insert(_contributions).values(token_usage_contribution_row(usage))
    )


def upsert_token_usage(connection: sa.Connection, usage: TokenUsageIncrement) -> None:
    """Adds ``usage`` to the legacy counter and to ProcessFlow's own record."""
    _upsert(connection, usage, update_token_usage, insert_token_usage)
    _upsert(
        connection,
        usage,
        update_token_usage_contribution,
        insert_token_usage_contribution,
    )


def _upsert(
    connection: sa.Connection,
    usage: TokenUsageIncrement,
    update: Any,
    insert: Any,
) -> None:
    if update(connection, usage):
        return
    try:
        with connection.begin_nested():
            insert(connection, usage)
    except sa.exc.IntegrityError:
        # Another relay inserted the row after our UPDATE found none.
        if not update(connection, usage):
            raise


def _average(total: Decimal, count: int, places: str) -> Decimal:
    return (total / count).quantize(Decimal(places), rounding=ROUND_HALF_UP)
