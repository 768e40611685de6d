"""Set-based statements for a legacy database on PostgreSQL.

A batch of any size costs one statement per table (and per update shape).
outbox_relay.legacy_store decides what is written and keeps the portable
statements that every other engine uses; this module only says how to
write it on PostgreSQL.

New rows go in with ``COPY ... FROM STDIN`` in binary: psycopg writes each
row in C (an array parameter is built element by element in Python, and
text COPY escapes every byte of the long prompts), and PostgreSQL inserts
them in bulk, firing the same constraints and triggers as an INSERT. Each
value is sent as its column's base type and read by the column's own
receive function, so a value too long or out of range fails the statement,
as an INSERT's would, and the batch falls back to one event at a time.

Updates and upserts take their rows as one array per column and unnest
them, with a fixed SQL text that PostgreSQL prepares once. The arrays are
cast to base types (text, bigint, numeric, ...), not to the columns' own
types, so every value then goes through the same assignment cast as in a
plain UPDATE.

TokenUsageAnalytics and ProcessFlow's contributions are upserted with
``INSERT ... ON CONFLICT DO UPDATE``: the inserted values are the ones the
portable INSERT writes and the SET expressions are the portable UPDATE's,
so the outcome is the same, in one atomic statement that needs no savepoint
even with several relays at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from outbox_relay import legacy_schema as ls
from outbox_relay.pg_arrays import BinaryArray
from processflow.db import driver_cursor

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


_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _copy_statement(table_name: str, names: tuple[str, ...], binary: bool) -> str:
    quote = _POSTGRESQL.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in names)
    binary_format = " (FORMAT BINARY)" if binary else ""
    return f"COPY {quote(table_name)} ({columns}) FROM STDIN{binary_format}"


# Subclasses before their bases (BigInteger is an Integer, Text a String).
# Integers carry their range: psycopg would wrap an out-of-range value
# around in a binary int4, where PostgreSQL must reject it.
_COPY_TYPES: tuple[tuple[type[sa.types.TypeEngine[Any]], str, int], ...] = (
    (sa.Boolean, "bool", 0),
    (sa.BigInteger, "int8", 2**63),
    (sa.SmallInteger, "int2", 2**15),
    (sa.Integer, "int4", 2**31),
    (sa.Numeric, "numeric", 0),
    (sa.DateTime, "timestamp", 0),
    (sa.Date, "date", 0),
    (sa.String, "text", 0),
)


@dataclass(frozen=True)
class _CopyLayout:
    """How one table's rows with the given columns go in binary."""

    types: list[str]
    # (position, bound) of each integer column: -bound <= value < bound.
    integers: list[tuple[int, int]]

    def fits(self, rows: Sequence[tuple[Any, ...]]) -> bool:
        """Whether every integer is in its column's range."""
        return all(
            row[i] is None or -bound <= row[i] < bound
            for i, bound in self.integers
            for row in rows
        )


@functools.cache
def _copy_layout(table_name: str, names: tuple[str, ...]) -> _CopyLayout:
    table = ls.metadata.tables[table_name]
    types: list[str] = []
    integers: list[tuple[int, int]] = []
    for position, name in enumerate(names):
        column_type = table.c[name].type
        kind, bound = next(
            (kind, bound)
            for base, kind, bound in _COPY_TYPES
            if isinstance(column_type, base)
        )
        types.append(kind)
        if bound:
            integers.append((position, bound))
    return _CopyLayout(types, integers)


def insert_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> None:
    """Inserts ``rows`` (all with the same keys) with one COPY: binary when
    every value fits its column's binary form, else text, which leaves the
    verdict on a bad value to PostgreSQL."""
    names = tuple(rows[0])
    values = _tuples(rows, names)
    layout = _copy_layout(table.name, names)
    binary = layout.fits(values)
    statement = _copy_statement(table.name, names, binary)
    with (
        driver_cursor(connection, statement) as cursor,
        cursor.copy(statement) as copy,
    ):
        if binary:
            copy.set_types(layout.types)
        for row in values:
            copy.write_row(row)


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
