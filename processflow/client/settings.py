"""Options shared by the client commands (``show``, ``watch``, ``demo``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import grpc

from processflow.client.config import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_TARGET,
    tls_credentials,
)
from processflow.client.errors import TrackerError
from processflow.client.sync import Tracker
from processflow.settings import SettingsError, option

# Codes that mean "could not talk to the server" rather than "the server said no".
CONNECTION_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class ClientSettings:
    target: str = option(DEFAULT_TARGET, "HOST:PORT of the ProcessFlow gRPC server.")
    deadline_seconds: float = option(
        DEFAULT_DEADLINE_SECONDS, "Deadline of each call to the server, in seconds."
    )
    api_key: str | None = option(
        None, "API key sent as a bearer token; none when unset.", secret=True
    )
    tls_ca_file: str | None = option(
        None,
        "PEM CA bundle to verify the server's TLS certificate; plaintext when unset.",
    )

    def tracker(self) -> Tracker:
        """A tracker talking to the server these settings name."""
        if self.deadline_seconds <= 0:
            raise SettingsError("--deadline-seconds: must be positive")
        try:
            credentials = tls_credentials(self.tls_ca_file)
        except OSError as error:
            raise SettingsError(f"--tls-ca-file: {error}") from None
        return Tracker(
            self.target,
            deadline_seconds=self.deadline_seconds,
            api_key=self.api_key,
            credentials=credentials,
        )


def report_failure(command: str, target: str, error: TrackerError) -> int:
    """Prints why a call failed; returns the exit code (2: no connection or
    bad input, 1: any other refusal)."""
    if error.code in CONNECTION_CODES:
        print(
            f"processflow {command}: cannot reach the server at {target} "
            f"({error.code.name}: {error.details})",
            file=sys.stderr,
        )
        return 2
    print(f"processflow {command}: {error}", file=sys.stderr)
    return 2 if error.code == grpc.StatusCode.INVALID_ARGUMENT else 1
