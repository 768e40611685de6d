"""Event snapshots: what each applied-once event carried, and where it stood
in its session's sequence, so that verify and backfill rebuild the events the
relay applied rather than ones derived from the current state.

Adds process_flow_sessions.completed_sequence / completed_event,
process_flow_steps.finished_sequence / finished_event and
process_flow_llm_calls.sequence (all nullable: rows written before this
revision keep NULL and the derivation from their current state).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    ("process_flow_sessions", "completed_sequence", sa.BigInteger()),
    ("process_flow_sessions", "completed_event", sa.LargeBinary()),
    ("process_flow_steps", "finished_sequence", sa.BigInteger()),
    ("process_flow_steps", "finished_event", sa.LargeBinary()),
    ("process_flow_llm_calls", "sequence", sa.BigInteger()),
)


def upgrade(roles: frozenset[str]) -> None:
    if "main" in roles:
        for table, name, type_ in COLUMNS:
            op.add_column(table, sa.Column(name, type_, nullable=True))


def downgrade(roles: frozenset[str]) -> None:
    if "main" in roles:
        # SQLite drops a column in place since 3.35, views on the table kept.
        for table, name, _ in reversed(COLUMNS):
            op.drop_column(table, name)
