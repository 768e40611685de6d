"""Settings of the gRPC server (``processflow serve`` and ``dev``)."""

from __future__ import annotations

from dataclasses import dataclass

from processflow.settings import DEFAULT_SQLITE_URL, option


@dataclass(frozen=True)
class ServerSettings:
    listen: str = option("127.0.0.1:50051", "HOST:PORT the gRPC server listens on.")
    database_url: str = option(
        DEFAULT_SQLITE_URL,
        "SQLAlchemy URL of the ProcessFlow database (postgresql://... or sqlite:///...).",
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
    shutdown_grace_seconds: float = option(
        10.0, "On SIGTERM or SIGINT, how long in-flight calls may take to finish."
    )
    max_receive_message_bytes: int = option(
        16 * 1024 * 1024, "Largest request message the server accepts, in bytes."
    )
    max_concurrent_rpcs: int = option(
        256, "Calls handled at once; more are refused with RESOURCE_EXHAUSTED."
    )
    database_pool_size: int = option(
        8, "Database connections the server keeps open (PostgreSQL)."
    )
    database_threads: int = option(
        8, "Threads that run database work off the event loop."
    )
    max_text_chars: int = option(
        1_048_576, "Longest accepted prompt, response, input, output or SQL text."
    )
    max_logs_per_call: int = option(1000, "Most log lines in one call.")
    max_ingest_operations: int = option(5000, "Most operations in one Ingest request.")
    max_steps_per_session: int = option(10_000, "Most steps one session may have.")
    api_keys_file: str | None = option(
        None,
        "File of API keys (hashed) and certificate identities, one JSON object a "
        "line (docs/threat-model.md); authentication is off when unset.",
    )
    api_keys_reload_seconds: float = option(
        2.0, "How often the API keys file is checked for changes (also on SIGHUP)."
    )
    tls_cert_file: str | None = option(None, "PEM certificate chain to serve TLS with.")
    tls_key_file: str | None = option(None, "PEM private key of the certificate.")
    tls_client_ca_file: str | None = option(
        None, "PEM CA bundle; when set, clients must present a certificate it signed."
    )
    auto_migrate: bool = option(
        False, "Apply database migrations at start (always on under dev)."
    )

    @property
    def effective_legacy_database_url(self) -> str:
        return self.legacy_database_url or self.database_url
