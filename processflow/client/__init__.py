"""The Python client of ProcessFlow.

    from processflow.client import Tracker

    with Tracker("127.0.0.1:50051") as pf:
        with pf.session(user_id="u1", query="top customers") as s:
            with s.step("auth"):
                ...

``AsyncTracker`` offers the same with ``async with``. Every call has a
deadline and is retried by gRPC on UNAVAILABLE only, with the same
request_id, so a retry never has two effects (see config.py).
"""

from processflow.client.aio import AsyncSession, AsyncStep, AsyncTracker
from processflow.client.config import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_TARGET,
    channel_options,
    create_aio_channel,
    create_channel,
    load_service_config,
)
from processflow.client.core import current_session, current_step
from processflow.client.errors import TrackerError
from processflow.client.sync import Session, Step, Tracker

__all__ = [
    "DEFAULT_DEADLINE_SECONDS",
    "DEFAULT_TARGET",
    "AsyncSession",
    "AsyncStep",
    "AsyncTracker",
    "Session",
    "Step",
    "Tracker",
    "TrackerError",
    "channel_options",
    "create_aio_channel",
    "create_channel",
    "current_session",
    "current_step",
    "load_service_config",
]
