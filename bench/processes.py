"""Child processes of a benchmark run: start, wait until ready, read their
peak memory, stop. Output goes to a log file so that it costs no pipe."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processflow_command(*args: str) -> list[str]:
    """``processflow ARGS`` run by this interpreter, so the venv is the same."""
    return [sys.executable, "-m", "processflow.cli", *args]


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(
                self.log_path.read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return ""

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start(
    name: str, command: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    return Child(name, process, log_path)


def wait_until(
    child: Child,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    interval: float = 0.05,
) -> None:
    """Polls ``ready`` until it is true; fails with the child's log if it dies."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{child.name} not ready after {timeout}s:\n{child.log_tail()}"
            )
        time.sleep(interval)
