"""Pieces of requests that the sync and async trackers build: ids,
timestamps, structs, log lines, limits and status names. No I/O here."""

from __future__ import annotations

import datetime as dt
import re
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from processflow.v1 import processflow_service_pb2 as api
from processflow.v1 import resources_pb2 as res

# Longest texts the server accepts by default; longer ones are cut here
# rather than refused there.
MAX_ERROR_CHARS = 65_536
MAX_TEXT_CHARS = 1_048_576

LOG_LEVELS = {
    "debug": res.LOG_LEVEL_DEBUG,
    "info": res.LOG_LEVEL_INFO,
    "warning": res.LOG_LEVEL_WARNING,
    "error": res.LOG_LEVEL_ERROR,
    "critical": res.LOG_LEVEL_CRITICAL,
}
SESSION_STATUSES = {
    "completed": res.SESSION_STATUS_COMPLETED,
    "error": res.SESSION_STATUS_ERROR,
    "cancelled": res.SESSION_STATUS_CANCELLED,
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_request_id() -> str:
    """One per logical call: every retry of that call carries the same one."""
    return str(uuid.uuid4())


def new_step_id(code: str) -> str:
    prefix = _ID_UNSAFE.sub("-", code).strip("-")[:40] or "step"
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    if moment.tzinfo is None:
        # Naive datetimes are UTC throughout ProcessFlow.
        moment = moment.replace(tzinfo=dt.UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not values:
        return None
    message = struct_pb2.Struct()
    message.update(dict(values))
    return message


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_level(level: str) -> res.LogLevel.ValueType:
    try:
        return LOG_LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        ) from None


def log_input(
    message: str,
    *,
    level: str = "info",
    step_id: str = "",
    details: Mapping[str, Any] | None = None,
    exception: str = "",
    source: str = "",
    moment: dt.datetime | None = None,
) -> api.LogInput:
    return api.LogInput(
        step_id=step_id,
        level=log_level(level),
        message=message,
        details=struct(details),
        exception=cut(exception, MAX_ERROR_CHARS),
        source=source,
        timestamp=timestamp(moment or now()),
    )


def describe_exception(error: BaseException) -> tuple[str, str]:
    """(one-line message, full traceback) of an exception."""
    text = str(error)
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    trace = "".join(traceback.format_exception(error))
    return cut(message, MAX_ERROR_CHARS), cut(trace, MAX_ERROR_CHARS)


def is_cancellation(error: BaseException) -> bool:
    # KeyboardInterrupt, asyncio.CancelledError, SystemExit and the like stop
    # the run rather than fail it.
    return not isinstance(error, Exception)
