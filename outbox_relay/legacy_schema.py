"""The five legacy tables (exact names, columns and sizes), and the relay's
own bookkeeping that lives beside them in the legacy database.

LEGACY.md §3 is the contract. Types are portable so that PostgreSQL, SQLite
and MariaDB all accept them; nothing here may rely on one engine.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData(
    naming_convention={
        "pk": "PK_%(table_name)s",
        "fk": "FK_%(table_name)s_%(referred_table_name)s_%(column_0_name)s",
        "uq": "UQ_%(table_name)s_%(column_0_N_name)s",
        "ix": "IX_%(table_name)s_%(column_0_N_name)s",
        "ck": "CK_%(table_name)s_%(constraint_name)s",
    }
)

LegacyBigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# TEXT is NVARCHAR(MAX) in the original; MariaDB's TEXT stops at 64 KiB.
Text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# DATETIME2 keeps sub-second precision; MariaDB's DATETIME drops it by default.
DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_now = sa.func.current_timestamp()

prompt_success_tracking = sa.Table(
    "PromptSuccessTracking",
    metadata,
    sa.Column("Id", LegacyBigId, primary_key=True, autoincrement=True),
    sa.Column("SessionId", sa.String(128), nullable=False),
    sa.Column("UserId", sa.String(512), nullable=False),
    sa.Column("UserQuestion", sa.String(2000), nullable=False),
    sa.Column("GeneratedPrompt", Text, nullable=False),
    sa.Column("TemplateUsed", sa.String(100), nullable=True),
    sa.Column("IntentClassified", sa.String(50), nullable=False),
    sa.Column("DomainClassified", sa.String(50), nullable=False),
    sa.Column("TablesRetrieved", sa.String(1000), nullable=True),
    sa.Column("GeneratedSQL", Text, nullable=True),
    sa.Column("SQLExecutionSuccess", sa.Boolean(), nullable=True),
    sa.Column("SQLExecutionError", sa.String(2000), nullable=True),
    sa.Column("UserFeedbackRating", sa.Integer(), nullable=True),
    sa.Column("UserFeedbackComments", sa.String(1000), nullable=True),
    sa.Column("ProcessingTimeMs", sa.Integer(), nullable=False),
    sa.Column("ConfidenceScore", sa.Numeric(5, 4), nullable=False),
    sa.Column("CreatedDate", DateTime, nullable=False, server_default=_now),
    sa.Column("UpdatedDate", DateTime, nullable=True),
    sa.Index(None, "UserId"),
    sa.Index(None, "CreatedDate"),
    sa.Index(None, "IntentClassified"),
    sa.Index(None, "TemplateUsed"),
    sa.Index(None, "SessionId"),
)

prompt_construction_traces = sa.Table(
    "PromptConstructionTraces",
    metadata,
    sa.Column("Id", sa.String(450), primary_key=True),
    sa.Column("TraceId", sa.String(450), nullable=False, unique=True),
    sa.Column("UserId", sa.String(450), nullable=False),
    sa.Column("UserQuestion", Text, nullable=False),
    sa.Column("IntentType", sa.String(100), nullable=False),
    sa.Column("StartTime", DateTime, nullable=False),
    sa.Column("EndTime", DateTime, nullable=True),
    sa.Column(
        "OverallConfidence", sa.Numeric(5, 4), nullable=False, server_default="0"
    ),
    sa.Column("TotalTokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("FinalPrompt", Text, nullable=True),
    sa.Column("Success", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("ErrorMessage", Text, nullable=True),
    sa.Column("Metadata", Text, nullable=True),
    sa.Column("CreatedAt", DateTime, nullable=False, server_default=_now),
    sa.Column("UpdatedAt", DateTime, nullable=False, server_default=_now),
    sa.Index(None, "UserId"),
    sa.Index(None, "IntentType"),
    sa.Index(None, "CreatedAt"),
)

prompt_construction_steps = sa.Table(
    "PromptConstructionSteps",
    metadata,
    sa.Column("Id", sa.String(450), primary_key=True),
    sa.Column(
        "TraceId",
        sa.String(450),
        sa.ForeignKey("PromptConstructionTraces.TraceId", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("StepName", sa.String(200), nullable=False),
    sa.Column("StepOrder", sa.Integer(), nullable=False),
    sa.Column("StartTime", DateTime, nullable=False),
    sa.Column("EndTime", DateTime, nullable=True),
    sa.Column("Success", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("TokensAdded", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("Confidence", sa.Numeric(5, 4), nullable=False, server_default="0"),
    sa.Column("Content", Text, nullable=True),
    sa.Column("Details", Text, nullable=True),
    sa.Column("ErrorMessage", Text, nullable=True),
    sa.Column("CreatedAt", DateTime, nullable=False, server_default=_now),
    sa.Index(None, "TraceId"),
    sa.Index(None, "StepOrder"),
)

token_usage_analytics = sa.Table(
    "TokenUsageAnalytics",
    metadata,
    sa.Column("Id", sa.String(450), primary_key=True),
    sa.Column("UserId", sa.String(450), nullable=False),
    sa.Column("Date", sa.Date(), nullable=False),
    sa.Column("RequestType", sa.String(100), nullable=False),
    sa.Column("IntentType", sa.String(100), nullable=False),
    sa.Column("TotalRequests", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("TotalTokensUsed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("TotalCost", sa.Numeric(10, 6), nullable=False, server_default="0"),
    sa.Column(
        "AverageTokensPerRequest", sa.Numeric(10, 2), nullable=False, server_default="0"
    ),
    sa.Column(
        "AverageCostPerRequest", sa.Numeric(10, 6), nullable=False, server_default="0"
    ),
    sa.Column("CreatedAt", DateTime, nullable=False, server_default=_now),
    sa.Column("UpdatedAt", DateTime, nullable=False, server_default=_now),
    sa.UniqueConstraint(
        "UserId",
        "Date",
        "RequestType",
        "IntentType",
    ),
    sa.Index(None, "Date"),
    sa.Index(None, "UserId"),
)

llm_usage_logs = sa.Table(
    "LLMUsageLogs",
    metadata,
    sa.Column("Id", LegacyBigId, primary_key=True, autoincrement=True),
    sa.Column("RequestId", sa.String(100), nullable=False),
    sa.Column("UserId", sa.String(256), nullable=False),
    sa.Column("ProviderId", sa.String(50), nullable=False),
    sa.Column("ModelId", sa.String(100), nullable=False),
    sa.Column("RequestType", sa.String(50), nullable=False),
    sa.Column("RequestText", Text, nullable=False),
    sa.Column("ResponseText", Text, nullable=False),
    sa.Column("InputTokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("OutputTokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("TotalTokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("Cost", sa.Numeric(18, 8), nullable=False, server_default="0"),
    sa.Column("DurationMs", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("Success", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("ErrorMessage", sa.String(1000), nullable=True),
    sa.Column("Timestamp", DateTime, nullable=False, server_default=_now),
    sa.Column("Metadata", Text, nullable=True),
    sa.Index(None, "UserId"),
    sa.Index(None, "ProviderId"),
    sa.Index(None, "ModelId"),
    sa.Index(None, "Timestamp"),
    sa.Index(None, "RequestType"),
)
for _name in ("RequestId", "UserId", "ProviderId", "ModelId", "RequestType"):
    llm_usage_logs.append_constraint(
        sa.CheckConstraint(
            llm_usage_logs.c[_name] != sa.literal_column("''"),
            name=f"{_name}_NotEmpty",
        )
    )

LEGACY_TABLES = (
    prompt_success_tracking,
    prompt_construction_traces,
    prompt_construction_steps,
    token_usage_analytics,
    llm_usage_logs,
)

# The relay's own tables in the legacy database.

applied_events = sa.Table(
    "processflow_applied_events",
    metadata,
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("sequence", sa.BigInteger(), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    # Comma-separated sinks that were switched off when the event was applied;
    # a backfill covers them later.
    sa.Column("skipped_sinks", sa.String(200), nullable=False, server_default=""),
    # Set by a backfill for the events it re-derived.
    sa.Column("origin", sa.String(16), nullable=False, server_default="outbox"),
    sa.Column("applied_at", DateTime, nullable=False),
    sa.Index(None, "session_id", "sequence"),
)

# What ProcessFlow itself added to each TokenUsageAnalytics counter, so that
# verify can compare its own contributions and not rows from before it.
token_usage_contributions = sa.Table(
    "processflow_token_usage_contributions",
    metadata,
    sa.Column("user_id", sa.String(450), primary_key=True),
    sa.Column("usage_date", sa.Date(), primary_key=True),
    sa.Column("request_type", sa.String(100), primary_key=True),
    sa.Column("intent_type", sa.String(100), primary_key=True),
    sa.Column("total_requests", sa.BigInteger(), nullable=False),
    sa.Column("total_tokens", sa.BigInteger(), nullable=False),
    sa.Column("total_cost", sa.Numeric(18, 6), nullable=False),
    sa.Column("updated_at", DateTime, nullable=False),
)

RELAY_TABLES = (applied_events, token_usage_contributions)
