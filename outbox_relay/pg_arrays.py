"""Array parameters on PostgreSQL: a whole column of values, or a set of ids,
as one parameter, so that a statement's text does not depend on how many
rows it covers and PostgreSQL prepares it once.

The lists go as binary arrays. psycopg's text form quotes and escapes every
element with regular expressions, which for long texts costs ten times as
much; only lists wrapped here change, every other list keeps psycopg's
usual handling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.array import ListBinaryDumper
from sqlalchemy.dialects import postgresql


class BinaryArray(list[Any]):
    """A list that psycopg sends as a binary array."""


psycopg.adapters.register_dumper(BinaryArray, ListBinaryDumper)


def array_parameter(
    name: str, values: Iterable[Any], item_type: sa.types.TypeEngine[Any]
) -> Any:
    """``CAST(:name AS item_type[])`` bound to ``values``."""
    return sa.cast(sa.bindparam(name, BinaryArray(values)), postgresql.ARRAY(item_type))
