"""Alembic migrations: one history for the ProcessFlow and the legacy database."""
