"""Domain errors and the one table that maps them to gRPC status codes.

    ProcessFlowError
    ├── InvalidArgument        INVALID_ARGUMENT (+ google.rpc.BadRequest)
    ├── NotFound               NOT_FOUND
    ├── AlreadyExists          ALREADY_EXISTS
    ├── FailedPrecondition     FAILED_PRECONDITION
    ├── ResourceExhausted      RESOURCE_EXHAUSTED
    ├── Unauthenticated        UNAUTHENTICATED
    ├── PermissionDenied       PERMISSION_DENIED
    ├── DeadlineExceeded       DEADLINE_EXCEEDED
    └── Unavailable            UNAVAILABLE (database unreachable; safe to retry)

Database driver errors are translated into these at one boundary
(server/store/transaction.py); anything else that escapes a handler becomes
INTERNAL with a generic message and is logged with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (``logs[2].message``) and why."""

    field: str
    description: str


class ProcessFlowError(Exception):
    """Base of every error the API reports on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ProcessFlowError):
    def __init__(self, violations: list[FieldViolation]) -> None:
        fields = ", ".join(v.field for v in violations)
        super().__init__(f"invalid request: {fields}")
        self.violations = violations


class NotFound(ProcessFlowError):
    pass


class AlreadyExists(ProcessFlowError):
    pass


class FailedPrecondition(ProcessFlowError):
    pass


class ResourceExhausted(ProcessFlowError):
    pass


class Unauthenticated(ProcessFlowError):
    pass


class PermissionDenied(ProcessFlowError):
    pass


class DeadlineExceeded(ProcessFlowError):
    pass


class Unavailable(ProcessFlowError):
    pass


STATUS_CODES: dict[type[ProcessFlowError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code_for(error: ProcessFlowError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    raise LookupError(f"no status code for {type(error).__name__}")
