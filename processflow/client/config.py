"""The channel every ProcessFlow client should use: deadlines and retries.

Retries are gRPC's own (the ``retryPolicy`` of service_config.json): only
UNAVAILABLE is retried, with bounded exponential backoff. A retried attempt
re-sends the same serialized request, so the request_id the client chose once
per logical call travels with every attempt and the server applies the call
once. docs/client-config.md gives the same configuration for other languages.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import grpc
from grpc import aio

SERVICE = "processflow.v1.ProcessFlowService"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DEADLINE_SECONDS = 5.0

TARGET_ENV = "PROCESSFLOW_TARGET"
API_KEY_ENV = "PROCESSFLOW_API_KEY"

ChannelOptions = list[tuple[str, Any]]


def default_target() -> str:
    """$PROCESSFLOW_TARGET, else the address ``processflow dev`` listens on."""
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def call_metadata(
    api_key: str | None, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the API key (``api_key``, else
    $PROCESSFLOW_API_KEY) as a bearer token, then ``metadata``."""
    key = api_key or os.environ.get(API_KEY_ENV)
    bearer = (("authorization", f"Bearer {key}"),) if key else ()
    return (*bearer, *metadata)


def tls_credentials(ca_file: str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting the PEM bundle ``ca_file``; None (plaintext)
    when it is not given."""
    if not ca_file:
        return None
    with open(ca_file, "rb") as bundle:
        return grpc.ssl_channel_credentials(root_certificates=bundle.read())


def load_service_config(deadline_seconds: float | None = None) -> dict[str, Any]:
    """The packaged service config; with ``deadline_seconds``, the unary
    methods' default timeout is set to it (a per-call timeout can only
    shorten the one in the service config, never lengthen it)."""
    text = resources.files("processflow.client").joinpath("service_config.json")
    config: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    if deadline_seconds is not None:
        if deadline_seconds <= 0:
            raise ValueError(
                f"deadline_seconds must be positive, got {deadline_seconds}"
            )
        config = copy.deepcopy(config)
        for method_config in config["methodConfig"]:
            if "timeout" in method_config:
                method_config["timeout"] = f"{deadline_seconds:.3f}s"
    return config


def channel_options(
    service_config: dict[str, Any] | None = None,
    *,
    deadline_seconds: float | None = None,
    extra: Sequence[tuple[str, Any]] = (),
) -> ChannelOptions:
    """Channel options that turn retries on and install the service config."""
    config = service_config or load_service_config(deadline_seconds)
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        *extra,
    ]


def create_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    service_config: dict[str, Any] | None = None,
    deadline_seconds: float | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    opts = channel_options(
        service_config, deadline_seconds=deadline_seconds, extra=options
    )
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=opts)
    return grpc.insecure_channel(target, options=opts)


def create_aio_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    service_config: dict[str, Any] | None = None,
    deadline_seconds: float | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    opts = channel_options(
        service_config, deadline_seconds=deadline_seconds, extra=options
    )
    if credentials is not None:
        return aio.secure_channel(target, credentials, options=opts)
    return aio.insecure_channel(target, options=opts)
