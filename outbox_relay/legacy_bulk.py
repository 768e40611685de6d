"""Set-based statements for a legacy database on PostgreSQL.

Each statement takes its rows as one array per column and unnests them, so
a batch of any size costs one statement per table (and per update shape),
with a fixed SQL text that PostgreSQL prepares once. outbox_relay.legacy_store
decides what is written and keeps the portable statements that every other
engine uses; this module only says how to write it on PostgreSQL.

The arrays are cast to base types (text, bigint, numeric, ...), not to the
columns' own types, so every value then goes through the same assignment
cast as in a plain INSERT or UPDATE: a value too long or out of range fails
the statement the same way.

TokenUsageAnalytics and ProcessFlow's contributions are upserted with
``INSERT ... ON CONFLICT DO UPDATE``: the inserted values are the ones the
portable INSERT writes and the SET expressions are the portable UPDATE's,
so the outcome is the same, in one atomic statement that needs no savepoint
even with several relays at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from outbox_relay import legacy_schema as ls
from outbox_relay.pg_arrays import BinaryArray

_usage = ls.token_usage_analytics
_contributions = ls.token_usage_contributions

_USAGE_COLUMNS = (
    "Id",
    "UserId",
    "Date",
    "RequestType",
    "IntentType",
    "TotalRequests",
    "TotalTokensUsed",
    "TotalCost",
    "AverageTokensPerRequest",
    "AverageCostPerRequest",
    "CreatedAt",
    "UpdatedAt",
)
_CONTRIBUTION_COLUMNS = (
    "user_id",
    "usage_date",
    "request_type",
    "intent_type",
    "total_requests",
    "total_tokens",
    "total_cost",
    "updated_at",
)


def _element_type(column_type: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    if isinstance(column_type, sa.Boolean):
        return sa.Boolean()
    if isinstance(column_type, sa.Integer):
        return sa.BigInteger()
    if isinstance(column_type, sa.Numeric):
        return sa.Numeric()
    if isinstance(column_type, sa.DateTime):
        return sa.DateTime()
    if isinstance(column_type, sa.Date):
        return sa.Date()
    if isinstance(column_type, sa.String):
        return sa.Text()
    raise TypeError(f"no array type for {column_type!r}")


def _unnest(columns: Sequence[sa.Column[Any]]) -> Any:
    """``unnest(CAST(:p0 AS type[]), ...) AS anon(c0, ...)``."""
    arrays = [
        sa.cast(sa.bindparam(f"p{i}"), postgresql.ARRAY(_element_type(column.type)))
        for i, column in enumerate(columns)
    ]
    names = [f"c{i}" for i in range(len(columns))]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived()


def _arrays(rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]] | None:
    """The rows as one parameter per column; None when a column mixes Python
    types, which psycopg cannot send as one array (the caller then uses the
    portable statement)."""
    params: dict[str, list[Any]] = {}
    for i, values in enumerate(zip(*rows, strict=True)):
        kinds = set(map(type, values))
        kinds.discard(type(None))
        if len(kinds) > 1:
            return None
        params[f"p{i}"] = BinaryArray(values)
    return params


def _tuples(
    rows: Sequence[dict[str, Any]], names: Sequence[str]
) -> list[tuple[Any, ...]]:
    if len(names) == 1:
        return [(row[names[0]],) for row in rows]
    return list(map(itemgetter(*names), rows))


@functools.cache
def _insert_statement(table_name: str, names: tuple[str, ...]) -> sa.Insert:
    table = ls.metadata.tables[table_name]
    source = _unnest([table.c[name] for name in names])
    return sa.insert(table).from_select(list(names), sa.select(*source.c))


def insert_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> bool:
    """Inserts ``rows`` (all with the same keys) in one statement; False,
    having done nothing, when they cannot go as arrays."""
    names = tuple(rows[0])
    params = _arrays(_tuples(rows, names))
    if params is None:
        return False
    connection.execute(_insert_statement(table.name, names), params)
    return True


@functools.cache
def _update_statement(
    table_name: str, key_column: str, names: tuple[str, ...]
) -> sa.Update:
    table = ls.metadata.tables[table_name]
    source = _unnest([table.c[key_column], *(table.c[name] for name in names)])
    key, *values = source.c
    return (
        sa.update(table)
        .where(table.c[key_column] == key)
        .values({name: value for name, value in zip(names, values, strict=True)})
    )


def update_rows(
    connection: sa.Connection,
    table: sa.Table,
    key_column: str,
    names: tuple[str, ...],
    rows: Sequence[tuple[Any, dict[str, Any]]],
) -> bool:
    """Sets ``names`` of each (key, values) row, in one ``UPDATE ... FROM
    unnest(...)``; the keys must be distinct (one source row per target
    row). False, having done nothing, when the rows cannot go as arrays."""
    getter = itemgetter(*names)
    if len(names) == 1:
        tuples = [(key, values[names[0]]) for key, values in rows]
    else:
        tuples = [(key, *getter(values)) for key, values in rows]
    params = _arrays(tuples)
    if params is None:
        return False
    connection.execute(_update_statement(table.name, key_column, names), params)
    return True


@functools.cache
def _usage_upsert() -> sa.Insert:
    c = _usage.c
    source = _unnest([c[name] for name in _USAGE_COLUMNS])
    insert = postgresql.insert(_usage).from_select(
        list(_USAGE_COLUMNS), sa.select(*source.c)
    )
    new = insert.excluded
    requests = c.TotalRequests + new.TotalRequests
    tokens = c.TotalTokensUsed + new.TotalTokensUsed
    total_cost = c.TotalCost + new.TotalCost
    # The portable UPDATE's expressions (legacy_store.update_token_usage).
    return insert.on_conflict_do_update(
        index_elements=[c.UserId, c.Date, c.RequestType, c.IntentType],
        set_={
            "AverageTokensPerRequest": sa.func.round(
                sa.cast(tokens, sa.Numeric(24, 8)) / requests, 2
            ),
            "AverageCostPerRequest": sa.func.round(
                sa.cast(total_cost, sa.Numeric(24, 8)) / requests, 6
            ),
            "TotalRequests": requests,
            "TotalTokensUsed": tokens,
            "TotalCost": total_cost,
            "UpdatedAt": new.UpdatedAt,
        },
    )


@functools.cache
def _contribution_upsert() -> sa.Insert:
    c = _contributions.c
    source = _unnest([c[name] for name in _CONTRIBUTION_COLUMNS])
    insert = postgresql.insert(_contributions).from_select(
        list(_CONTRIBUTION_COLUMNS), sa.select(*source.c)
    )
    new = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=[c.user_id, c.usage_date, c.request_type, c.intent_type],
        set_={
            "total_requests": c.total_requests + new.total_requests,
            "total_tokens": c.total_tokens + new.total_tokens,
            "total_cost": c.total_cost + new.total_cost,
            "updated_at": new.updated_at,
        },
    )


def upsert_token_usage(
    connection: sa.Connection,
    counters: Sequence[dict[str, Any]],
    contributions: Sequence[dict[str, Any]],
) -> bool:
    """Adds increments to their TokenUsageAnalytics counters and to
    ProcessFlow's contributions, one row per key, in the order the rows are
    to be locked: two statements. Each row holds what the portable INSERT
    would write; on a conflict the portable UPDATE's expressions apply. False,
    having done nothing, when the rows cannot go as arrays."""
    counter_params = _arrays(_tuples(counters, _USAGE_COLUMNS))
    contribution_params = _arrays(_tuples(contributions, _CONTRIBUTION_COLUMNS))
    if counter_params is None or contribution_params is None:
        return False
    connection.execute(_usage_upsert(), counter_params)
    connection.execute(_contribution_upsert(), contribution_params)
    return True
