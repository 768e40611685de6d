"""``processflow dev`` (server and relay in one process) as a real process on
a free port, for tests that run what the README tells a newcomer to run.
tests/support/server.py starts ``processflow serve``."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PROCESSFLOW = str(Path(sys.executable).with_name("processflow"))
_LISTENING = re.compile(r"ProcessFlow listening on (\S+)")


@dataclass
class DevProcess:
    process: subprocess.Popen[str]
    target: str


def _read_address(
    process: subprocess.Popen[str], errors: IO[str], timeout: float
) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
                continue
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = _LISTENING.search(line)
            if match:
                return match[1]
    finally:
        selector.close()
    errors.seek(0)
    stderr = errors.read()
    raise AssertionError(
        f"server did not start: stdout={seen!r} stderr={stderr[-2000:]}"
    )


@contextmanager
def running_dev(
    database_url: str,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Iterator[DevProcess]:
    """Starts ``processflow dev`` on 127.0.0.1 with a free port; stops it
    with SIGTERM (then SIGKILL) on exit."""
    args = [
        PROCESSFLOW,
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--log-level",
        "WARNING",
        "--shutdown-grace-seconds",
        "2",
        *extra_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # stderr goes to a file, not a pipe: a chatty server must never block on it.
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as process,
    ):
        try:
            yield DevProcess(process, _read_address(process, errors, timeout))
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
