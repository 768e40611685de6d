"""Tables the server owns: the process_flow_* tables, the outbox, idempotency.

Timestamps are naive UTC on every engine, as in the legacy tables, so that
PostgreSQL and SQLite store and compare them the same way.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an INTEGER PRIMARY KEY.
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


sessions = sa.Table(
    "process_flow_sessions",
    metadata,
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
    # Fingerprint of the StartSession content: a retry with the same session
    # id and content answers as the first call; different content conflicts.
    sa.Column("start_fingerprint", sa.String(64), nullable=False),
    # Fingerprint of the CompleteSession outcome, for the same reason.
    sa.Column("completion_fingerprint", sa.String(64), nullable=True),
    # Sequence of the session's latest outbox event. Every write bumps it,
    # which also serialises writes to one session (see server/outbox.py).
    sa.Column("event_sequence", sa.BigInteger(), nullable=False, server_default="0"),
    # The session_completed event as the relay applied it: its sequence and
    # its serialized SessionCompleted, written with the completion. verify
    # and backfill rebuild it from here, since facts recorded later (an LLM
    # call after the completion) change the roll-up it was taken from.
    # NULL for sessions completed before revision 0002.
    sa.Column("completed_sequence", sa.BigInteger(), nullable=True),
    sa.Column("completed_event", sa.LargeBinary(), nullable=True),
    *_audit_columns(),
    sa.Index(None, "tenant_id", "start_time", "id"),
    sa.Index(None, "user_id", "start_time"),
    sa.Index(None, "conversation_id"),
    sa.Index(None, "status"),
)

steps = sa.Table(
    "process_flow_steps",
    metadata,
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
    # Set with the first terminal status; the legacy row is written once.
    sa.Column("finished_event_written", sa.Boolean(), nullable=False),
    # The step_finished event of that first terminal status: its sequence and
    # its serialized StepFinished, never changed afterwards (later updates
    # change the step, not its legacy row). NULL before revision 0002.
    sa.Column("finished_sequence", sa.BigInteger(), nullable=True),
    sa.Column("finished_event", sa.LargeBinary(), nullable=True),
    *_audit_columns(),
    sa.UniqueConstraint("session_id", "step_id"),
    sa.Index(None, "step_type", "start_time"),
)

logs = sa.Table(
    "process_flow_logs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "session_id",
        sa.String(128),
        sa.ForeignKey("process_flow_sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("step_id", sa.String(128), nullable=True),
    sa.Column("log_level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("details", Json, nullable=True),
    sa.Column("exception", sa.Text(), nullable=True),
    sa.Column("source", sa.String(256), nullable=True),
    sa.Column("timestamp", sa.DateTime(), nullable=False),
    *_audit_columns(),
    sa.Index(None, "session_id", "id"),
)

transparency = sa.Table(
    "process_flow_transparency",
    metadata,
    sa.Column(
        "session_id",
        sa.String(128),
        sa.ForeignKey("process_flow_sessions.session_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("model", sa.String(100), nullable=True),
    sa.Column("temperature", sa.Float(), nullable=True),
    sa.Column("max_tokens", sa.Integer(), nullable=True),
    sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
    sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
    sa.Column("total_tokens", sa.BigInteger(), nullable=False),
    sa.Column("estimated_cost", sa.Numeric(10, 6), nullable=False),
    sa.Column("confidence", Confidence, nullable=True),
    sa.Column("ai_processing_time_ms", sa.BigInteger(), nullable=False),
    sa.Column("api_call_count", sa.Integer(), nullable=False),
    sa.Column("prompt_details", sa.Text(), nullable=True),
    sa.Column("response_analysis", sa.Text(), nullable=True),
    sa.Column("quality_metrics", Json, nullable=True),
    sa.Column("optimization_suggestions", sa.Text(), nullable=True),
    *_audit_columns(),
)

llm_calls = sa.Table(
    "process_flow_llm_calls",
    metadata,
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
    # Sequence of the call's llm_call_recorded event within its session, so
    # that verify and backfill apply it in the relay's order. NULL before
    # revision 0002.
    sa.Column("sequence", sa.BigInteger(), nullable=True),
    *_audit_columns(),
    sa.Index(None, "session_id", "id"),
    sa.Index(None, "tenant_id", "call_time"),
)

outbox = sa.Table(
    "process_flow_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("sequence", sa.BigInteger(), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    # processflow.v1.OutboxEvent, serialized.
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    # pending -> applied | dead; dead -> pending (replay) | discarded (skip).
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("settled_at", sa.DateTime(), nullable=True),
    sa.UniqueConstraint("session_id", "sequence"),
    # The claim scans pending events only; the partial index stays small
    # however long settled events are kept.
    sa.Index(
        "ix_process_flow_outbox_pending",
        "id",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    ),
    sa.Index(None, "status", "settled_at"),
)

requests = sa.Table(
    "process_flow_requests",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("tenant_id", sa.String(128), primary_key=True, server_default=""),
    sa.Column("method", sa.String(64), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("response", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Index(None, "created_at"),
)
