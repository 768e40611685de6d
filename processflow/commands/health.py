"""``processflow health``: ask a server whether it is SERVING (for probes)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from processflow.settings import add_arguments, load, option


@dataclass(frozen=True)
class HealthSettings:
    target: str = option("127.0.0.1:50051", "HOST:PORT of the server to ask.")
    service: str = option("", "Service to ask about; empty for the server as a whole.")
    timeout_seconds: float = option(5.0, "How long to wait for the answer.")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check a server's health (exit 0 only when SERVING)",
        description="Ask a server's grpc.health.v1 service for its status and print "
        "it. Exit 0 when SERVING, 1 for any other status, 2 when the server "
        "cannot be reached.",
    )
    add_arguments(parser, HealthSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load(HealthSettings, args)
    request = health_pb2.HealthCheckRequest(service=settings.service)
    with grpc.insecure_channel(settings.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(request, timeout=settings.timeout_seconds)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                print("SERVICE_UNKNOWN")
                return 1
            print(
                f"processflow health: cannot reach {settings.target} "
                f"({code.name}: {error.details()})",
                file=sys.stderr,
            )
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
