"""Baseline: ProcessFlow tables, outbox, idempotency records, views; legacy
tables (only where absent) and the relay's ledger.

This revision builds the tables from the declarations in server/schema.py and
outbox_relay/legacy_schema.py as they stood when it was written. Before a
later revision changes a table, copy that table's declaration into this file
so that the baseline stays what it was (see migrations/README.md): the
sessions, steps and LLM-call tables below are such copies (changed by 0002).

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox_relay import legacy_schema
from server import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# The tables that later revisions change, as they stood at this revision.
# The other server tables are still built from server/schema.py.
BASELINE = sa.MetaData(naming_convention=schema.NAMING_CONVENTION)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Confidence = sa.Numeric(5, 4)


def _audit_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("updated_by", sa.String(128), nullable=True),
    ]


SESSIONS = sa.Table(
    "process_flow_sessions",
    BASELINE,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), nullable=False, unique=True),
    sa.Column("tenant_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("query", sa.Text(), nullable=False),
    sa.Column("query_type", sa.String(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("start_time", sa.DateTime(), nullable=False),
    sa.Column("end_time", sa.DateTime(), nullable=True),
    sa.Column("total_duration_ms", sa.BigInteger(), nullable=True),
    sa.Column("overall_confidence", Confidence, nullable=True),
    sa.Column("generated_sql", sa.Text(), nullable=True),
    sa.Column("execution_result", sa.Text(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("metadata", Json, nullable=True),
    sa.Column("conversation_id", sa.String(128), nullable=True),
    sa.Column("message_id", sa.String(128), nullable=True),
    sa.Column("intent", sa.String(50), nullable=True),
    sa.Column("domain", sa.String(50), nullable=True),
    sa.Column("template", sa.String(100), nullable=True),
    sa.Column("tables_retrieved", Json, nullable=True),
    sa.Column("start_fingerprint", sa.String(64), nullable=False),
    sa.Column("completion_fingerprint", sa.String(64), nullable=True),
    sa.Column("event_sequence", sa.BigInteger(), nullable=False, server_default="0"),
    *_audit_columns(),
    sa.Index(None, "tenant_id", "start_time", "id"),
    sa.Index(None, "user_id", "start_time"),
    sa.Index(None, "conversation_id"),
    sa.Index(None, "status"),
)

STEPS = sa.Table(
    "process_flow_steps",
    BASELINE,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "session_id",
        sa.String(128),
        sa.ForeignKey("process_flow_sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("step_id", sa.String(128), nullable=False),
    sa.Column("step_type", sa.String(64), nullable=False),
    sa.Column("parent_step_id", sa.String(128), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("step_order", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("start_time", sa.DateTime(), nullable=True),
    sa.Column("end_time", sa.DateTime(), nullable=True),
    sa.Column("duration_ms", sa.BigInteger(), nullable=True),
    sa.Column("confidence", Confidence, nullable=True),
    sa.Column("input_data", sa.Text(), nullable=True),
    sa.Column("output_data", sa.Text(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("metadata", Json, nullable=True),
    sa.Column("retry_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("tokens_used", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("finished_event_written", sa.Boolean(), nullable=False),
    *_audit_columns(),
    sa.UniqueConstraint("session_id", "step_id"),
    sa.Index(None, "step_type", "start_time"),
)

LLM_CALLS = sa.Table(
    "process_flow_llm_calls",
    BASELINE,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(128), nullable=False, unique=True),
    sa.Column(
        "session_id",
        sa.String(128),
        sa.ForeignKey("process_flow_sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tenant_id", sa.String(128), nullable=False, server_default=""),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("query_type", sa.String(100), nullable=False),
    sa.Column("step_id", sa.String(128), nullable=True),
    sa.Column("provider", sa.String(50), nullable=True),
    sa.Column("model", sa.String(100), nullable=True),
    sa.Column("request_type", sa.String(50), nullable=True),
    sa.Column("prompt_text", sa.Text(), nullable=True),
    sa.Column("response_text", sa.Text(), nullable=True),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("total_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cost", sa.Numeric(18, 8), nullable=False),
    sa.Column("duration_ms", sa.BigInteger(), nullable=False),
    sa.Column("success", sa.Boolean(), nullable=False),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("call_time", sa.DateTime(), nullable=False),
    sa.Column("temperature", sa.Float(), nullable=True),
    sa.Column("max_tokens", sa.Integer(), nullable=True),
    sa.Column("confidence", Confidence, nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    *_audit_columns(),
    sa.Index(None, "session_id", "id"),
    sa.Index(None, "tenant_id", "call_time"),
)

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


def _current_tables() -> list[sa.Table]:
    """The server tables no later revision has changed, from server/schema.py."""
    return [t for t in schema.metadata.sorted_tables if t.name not in BASELINE.tables]


def upgrade(roles: frozenset[str]) -> None:
    if "main" in roles:
        bind = op.get_bind()
        # Sessions first: the other tables reference it.
        BASELINE.create_all(bind)
        schema.metadata.create_all(bind, tables=_current_tables())
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
        bind = op.get_bind()
        schema.metadata.drop_all(bind, tables=_current_tables())
        BASELINE.drop_all(bind)
