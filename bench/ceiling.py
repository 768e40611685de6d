"""Where a unary write's time goes: the echo baseline, ProcessFlow with its
store stubbed out (bench/stub_store.py), and the real ProcessFlow, measured
one after another in the same run at one concurrency, with the CPU time each
process used. Prints a table and, last, one JSON object.

    python -m bench.ceiling [--concurrency 16] [--seconds 8] [--rounds 2]

The stubbed server shows the most any change to the database work could
reach; the CPU columns show which process (server, PostgreSQL, load
generator) the cores went to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import load, processes
from bench.databases import Databases
from bench.run import is_serving
from bench.workload import session_runs

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def backend_cpu_seconds(database: str) -> float:
    """CPU time of the PostgreSQL backends connected to ``database``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            if command.startswith(b"postgres:") and f" {database} ".encode() in command:
                total += cpu_seconds(int(entry.name))
        except OSError:
            continue
    return total


def measure(
    target: Callable[[grpc.aio.Channel], load.Target],
    address: str,
    pid: int,
    database: str | None,
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    async def run() -> load.Throughput:
        async with load.channel(address) as channel:
            result, problem = await load.run_closed_loop(
                target(channel),
                session_runs(),
                concurrency=concurrency,
                duration_seconds=seconds,
                warmup_seconds=1.0,
            )
        if result.errors:
            raise RuntimeError(f"{result.errors} calls failed, first: {problem}")
        return result

    server_before = cpu_seconds(pid)
    backends_before = backend_cpu_seconds(database) if database else 0.0
    loader_before = cpu_seconds(os.getpid())
    result = asyncio.run(run())
    calls = result.count or 1
    wall = seconds + 1.0  # the warm-up is in the CPU figures too
    return {
        "rps": round(result.rate, 1),
        "p99_ms": round(result.p99_ms or 0.0, 1),
        "server_cores": round((cpu_seconds(pid) - server_before) / wall, 2),
        "postgres_cores": round(
            ((backend_cpu_seconds(database) if database else 0.0) - backends_before)
            / wall,
            2,
        ),
        "loader_cores": round((cpu_seconds(os.getpid()) - loader_before) / wall, 2),
        "server_cpu_us_per_call": round(
            1e6 * (cpu_seconds(pid) - server_before) / (calls * wall / seconds)
        ),
    }


HEADER = (
    f"{'':14} {'calls/s':>8} {'ratio':>6} {'p99 ms':>7} {'server':>7} "
    f"{'postgres':>9} {'loader':>7} {'server us/call':>15}"
)


def run_variant(
    name: str, command: list[str], dbs: Databases, log_dir: Path, args: Any
) -> dict[str, float]:
    address = f"127.0.0.1:{processes.free_port()}"
    database = None
    command = [*command, "--listen", address]
    if name != "echo":
        url = dbs.create_migrated("main")
        database = url.rsplit("/", 1)[1]
        command += ["--database-url", url]
    child = processes.start(name.replace(" ", "-"), command, log_dir)
    try:
        target: Callable[[grpc.aio.Channel], load.Target]
        if name == "echo":
            asyncio.run(load.wait_for_channel(address))
            target = load.EchoTarget
        else:
            processes.wait_until(child, lambda: is_serving(address))
            target = load.ProcessFlowTarget
        return measure(
            target, address, child.pid, database, args.concurrency, args.seconds
        )
    finally:
        child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    variants = {
        "echo": [sys.executable, "-m", "bench.echo"],
        "stubbed store": [sys.executable, "-m", "bench.stub_store", "serve"],
        "ProcessFlow": processes.processflow_command("serve"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with (
        tempfile.TemporaryDirectory(prefix="pf-ceiling-") as log_dir,
        Databases() as dbs,
    ):
        for _ in range(args.rounds):
            for name, command in variants.items():
                figures = run_variant(name, command, dbs, Path(log_dir), args)
                results[name].append(figures)
                print(f"{name:14} {figures}", file=sys.stderr)
    best = {name: max(runs, key=lambda f: f["rps"]) for name, runs in results.items()}
    echo_rps = best["echo"]["rps"]
    print(f"\nconcurrency {args.concurrency}, best of {args.rounds} rounds")
    print(HEADER)
    for name, figures in best.items():
        print(
            f"{name:14} {figures['rps']:8.0f} {figures['rps'] / echo_rps:6.2f} "
            f"{figures['p99_ms']:7.1f} {figures['server_cores']:7.2f} "
            f"{figures['postgres_cores']:9.2f} {figures['loader_cores']:7.2f} "
            f"{figures['server_cpu_us_per_call']:15.0f}"
        )
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
