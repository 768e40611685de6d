"""Settings of the outbox relay (``processflow relay`` and ``dev``)."""

from __future__ import annotations

from dataclasses import dataclass

from processflow.settings import DEFAULT_SQLITE_URL, SettingsError, option

SINKS = (
    "PromptSuccessTracking",
    "PromptConstructionTraces",
    "PromptConstructionSteps",
    "TokenUsageAnalytics",
    "LLMUsageLogs",
)


@dataclass(frozen=True)
class RelaySettings:
    database_url: str = option(
        DEFAULT_SQLITE_URL,
        "SQLAlchemy URL of the ProcessFlow database (the outbox).",
        secret=True,
    )
    legacy_database_url: str | None = option(
        None,
        "URL of the database holding the legacy tables; the main database when unset.",
        secret=True,
    )
    metrics_listen: str | None = option(
        None, "HOST:PORT for the Prometheus metrics endpoint; off when unset."
    )
    log_format: str = option("text", "Log line format: text or json.")
    log_level: str = option("INFO", "Lowest level logged: DEBUG, INFO, WARNING, ERROR.")
    batch_size: int = option(
        2000, "Most events claimed and applied in one transaction."
    )
    poll_interval_seconds: float = option(
        1.0, "Longest wait between two looks at the outbox when no wake-up comes."
    )
    max_attempts: int = option(8, "Attempts at one event before it is dead-lettered.")
    retry_initial_seconds: float = option(0.5, "Backoff before the second attempt.")
    retry_max_seconds: float = option(300.0, "Longest backoff between two attempts.")
    outage_report_interval_seconds: float = option(
        30.0, "While the legacy database is down, how often the relay says so."
    )
    retention_hours: float = option(
        168.0, "How long settled events stay in the outbox before they are pruned."
    )
    retention_batch_size: int = option(1000, "Most events pruned in one statement.")
    retention_interval_seconds: float = option(
        60.0, "Least time between two pruning passes (run when the outbox is idle)."
    )
    disabled_sinks: tuple[str, ...] = option(
        (), "Legacy tables not to write (phase-out): " + ", ".join(SINKS) + "."
    )
    shutdown_grace_seconds: float = option(
        10.0,
        "On SIGTERM, how long the current batch may take before it is rolled back.",
    )

    @property
    def effective_legacy_database_url(self) -> str:
        return self.legacy_database_url or self.database_url


def validate(settings: RelaySettings) -> None:
    """Rejects values the relay cannot work with; the message names the flag."""
    unknown = [name for name in settings.disabled_sinks if name not in SINKS]
    if unknown:
        raise SettingsError(
            f"--disabled-sinks: unknown sink {', '.join(map(repr, unknown))}; "
            f"the sinks are {', '.join(SINKS)}"
        )
    for name in ("batch_size", "max_attempts", "retention_batch_size"):
        if int(getattr(settings, name)) < 1:
            flag = "--" + name.replace("_", "-")
            raise SettingsError(
                f"{flag}: must be at least 1, got {getattr(settings, name)}"
            )
    if settings.poll_interval_seconds <= 0:
        raise SettingsError("--poll-interval-seconds: must be more than 0")
