"""One place that turns gRPC failures into the client's exception."""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class TrackerError(Exception):
    """A ProcessFlow call failed. ``code`` is the gRPC status code; for
    INVALID_ARGUMENT, ``field_violations`` names each bad field."""

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        self.method = method
        self.code = code
        self.details = details
        self.field_violations = field_violations or []
        text = f"{method} failed: {code.name}: {details}"
        if self.field_violations:
            text += (
                " (" + "; ".join(f"{f}: {d}" for f, d in self.field_violations) + ")"
            )
        super().__init__(text)


def _field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    trailing = (
        error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    )
    for item in trailing or ():
        key, value = cast(tuple[str, str | bytes], item)
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        violations: list[tuple[str, str]] = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                violations.extend(
                    (v.field, v.description) for v in bad_request.field_violations
                )
        return violations
    return []


def translate(method: str, error: grpc.RpcError) -> TrackerError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return TrackerError(method, code, details or "", _field_violations(error))
