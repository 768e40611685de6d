"""Baseline: ProcessFlow tables, outbox, idempotency records, views; legacy
tables (only where absent) and the relay's ledger.

This revision builds the tables from the declarations in server/schema.py and
outbox_relay/legacy_schema.py as they stood when it was written. Before a
later revision changes a table, copy that table's declaration into this file
so that the baseline stays what it was (see migrations/README.md).

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox_relay import legacy_schema
from server import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SESSION_SUMMARY_VIEW = """
CREATE VIEW process_flow_session_summary AS
SELECT
    s.session_id,
    s.tenant_id,
    s.user_id,
    s.query_type,
    s.status,
    s.start_time,
    s.end_time,
    s.total_duration_ms,
    s.overall_confidence,
    COALESCE(st.steps_total, 0) AS steps_total,
    COALESCE(st.steps_completed, 0) AS steps_completed,
    COALESCE(st.steps_error, 0) AS steps_error,
    st.average_step_confidence,
    COALESCE(lg.logs_total, 0) AS logs_total,
    COALESCE(lg.logs_warning, 0) AS logs_warning,
    COALESCE(lg.logs_error, 0) AS logs_error,
    COALESCE(t.total_tokens, 0) AS total_tokens,
    COALESCE(t.estimated_cost, 0) AS total_cost,
    COALESCE(t.api_call_count, 0) AS llm_calls
FROM process_flow_sessions s
LEFT JOIN (
    SELECT
        session_id,
        COUNT(*) AS steps_total,
        SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS steps_completed,
        SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS steps_error,
        AVG(confidence) AS average_step_confidence
    FROM process_flow_steps
    GROUP BY session_id
) st ON st.session_id = s.session_id
LEFT JOIN (
    SELECT
        session_id,
        COUNT(*) AS logs_total,
        SUM(CASE WHEN log_level = 'Warning' THEN 1 ELSE 0 END) AS logs_warning,
        SUM(CASE WHEN log_level IN ('Error', 'Critical') THEN 1 ELSE 0 END)
            AS logs_error
    FROM process_flow_logs
    GROUP BY session_id
) lg ON lg.session_id = s.session_id
LEFT JOIN process_flow_transparency t ON t.session_id = s.session_id
"""

STEP_PERFORMANCE_VIEW = """
CREATE VIEW process_flow_step_performance AS
SELECT
    step_type,
    COUNT(*) AS executions,
    AVG(duration_ms) AS average_duration_ms,
    MIN(duration_ms) AS min_duration_ms,
    MAX(duration_ms) AS max_duration_ms,
    AVG(confidence) AS average_confidence,
    SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS success_count,
    SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS error_count,
    100.0 * SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) / COUNT(*)
        AS success_rate_percent
FROM process_flow_steps
WHERE start_time IS NOT NULL AND end_time IS NOT NULL
GROUP BY step_type
"""


def _create_absent(tables: tuple[sa.Table, ...]) -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for table in tables:
        if table.name not in existing:
            table.create(bind)


def upgrade(roles: frozenset[str]) -> None:
    if "main" in roles:
        bind = op.get_bind()
        schema.metadata.create_all(bind)
        op.execute(SESSION_SUMMARY_VIEW)
        op.execute(STEP_PERFORMANCE_VIEW)
    if "legacy" in roles:
        # A legacy table that exists already belongs to the legacy
        # application: it is used as it is, never altered.
        _create_absent(legacy_schema.LEGACY_TABLES)
        _create_absent(legacy_schema.RELAY_TABLES)


def downgrade(roles: frozenset[str]) -> None:
    if "legacy" in roles:
        for table in reversed(legacy_schema.RELAY_TABLES):
            table.drop(op.get_bind(), checkfirst=True)
    if "main" in roles:
        op.execute("DROP VIEW IF EXISTS process_flow_step_performance")
        op.execute("DROP VIEW IF EXISTS process_flow_session_summary")
        schema.metadata.drop_all(op.get_bind())
