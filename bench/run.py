"""One benchmark run: every measurement beside its baseline, then the report.

Phases, each with its own throwaway databases:
1. one ``processflow serve`` process for the whole phase, and the echo
   baseline beside it: unary writes at each concurrency, Ingest (and COPY of
   the rows it wrote into a fresh database), then, with a relay started,
   the coverage lag at a steady rate;
2. relay drain of a backlog into the same database, then into a separate one;
3. the procrastinate baseline on its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import drain, ingest, load, peer_queue, processes
from bench.databases import Databases
from bench.report import Report, UnaryLevel, read_machine, render_markdown
from bench.stats import percentile, summary
from bench.workload import ingest_calls, session_runs

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Config:
    mode: str
    unary_seconds: float
    warmup_seconds: float
    ingest_events: int
    backlog_events: int
    peer_queue_events: int
    lag_seconds: float
    concurrency_levels: tuple[int, ...] = (1, 16, 64)
    ingest_clients: int = 4
    operations_per_request: int = 500
    lag_rate_per_second: float = 1000.0
    lag_clients: int = 32
    lag_sessions_per_request: int = 5
    # Caps: a slow system shortens a measurement instead of stretching it.
    ingest_max_seconds: float = 20.0
    drain_max_seconds: float = 20.0
    peer_queue_max_seconds: float = 15.0
    catch_up_max_seconds: float = 30.0


QUICK = Config(
    "quick",
    unary_seconds=3,
    warmup_seconds=0.5,
    ingest_events=20_000,
    backlog_events=20_000,
    peer_queue_events=2_100,
    lag_seconds=10,
    ingest_max_seconds=15.0,
    drain_max_seconds=15.0,
    peer_queue_max_seconds=10.0,
    catch_up_max_seconds=10.0,
)
FULL = Config(
    "full",
    unary_seconds=15,
    warmup_seconds=2,
    ingest_events=100_000,
    backlog_events=200_000,
    peer_queue_events=14_000,
    lag_seconds=30,
    ingest_max_seconds=90.0,
    drain_max_seconds=300.0,
    peer_queue_max_seconds=60.0,
    catch_up_max_seconds=300.0,
)


def command_available(name: str) -> bool:
    """Whether ``processflow NAME --help`` runs (the command is built)."""
    import subprocess

    result = subprocess.run(
        processes.processflow_command(name, "--help"),
        cwd=processes.REPO,
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def is_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class Run:
    def __init__(self, config: Config, databases: Databases, log_dir: Path) -> None:
        self.config = config
        self.databases = databases
        self.log_dir = log_dir
        self.figures: dict[str, float | None] = {}
        self.levels: list[UnaryLevel] = []
        self.notes: list[str] = []
        self.relay_peaks: list[float] = []

    def note(self, text: str) -> None:
        log.info("%s", text)
        self.notes.append(text)

    # Phase 1 -----------------------------------------------------------------

    def server_phase(self, with_server: bool, with_relay: bool) -> None:
        echo_address = f"127.0.0.1:{processes.free_port()}"
        echo = processes.start(
            "echo",
            [sys.executable, "-m", "bench.echo", "--listen", echo_address],
            self.log_dir,
        )
        server: processes.Child | None = None
        try:
            asyncio.run(load.wait_for_channel(echo_address))
            if with_server:
                url = self.databases.create_migrated("main")
                address = f"127.0.0.1:{processes.free_port()}"
                server = processes.start(
                    "server",
                    processes.processflow_command(
                        "serve", "--listen", address, "--database-url", url
                    ),
                    self.log_dir,
                )
                processes.wait_until(server, lambda: is_serving(address))
            asyncio.run(self.unary(echo_address, address if server else None))
            if server is not None:
                asyncio.run(self.ingest(address, url))
                if with_relay:
                    self.lag(address, url, server)
                self.figures["server_rss_mb"] = server.peak_rss_mib()
        finally:
            echo.stop()
            if server is not None:
                server.stop()

    async def unary(self, echo_address: str, address: str | None) -> None:
        config = self.config
        async with load.channel(echo_address) as echo_channel:
            pf_channel = load.channel(address) if address else None
            try:
                for concurrency in config.concurrency_levels:
                    pf = None
                    if pf_channel is not None:
                        pf, problem = await load.run_closed_loop(
                            load.ProcessFlowTarget(pf_channel),
                            session_runs(),
                            concurrency=concurrency,
                            duration_seconds=config.unary_seconds,
                            warmup_seconds=config.warmup_seconds,
                        )
                        if pf.errors:
                            self.note(
                                f"unary c={concurrency}: {pf.errors} errors, "
                                f"first: {problem}"
                            )
                    echo, _ = await load.run_closed_loop(
                        load.EchoTarget(echo_channel),
                        session_runs(),
                        concurrency=concurrency,
                        duration_seconds=config.unary_seconds,
                        warmup_seconds=config.warmup_seconds,
                    )
                    level = UnaryLevel(
                        concurrency,
                        pf.rate if pf else None,
                        pf.p50_ms if pf else None,
                        pf.p99_ms if pf else None,
                        echo.rate,
                        echo.p50_ms,
                        echo.p99_ms,
                    )
                    log.info("unary %s", level)
                    self.levels.append(level)
                    if concurrency == 16:
                        self.figures["unary_rps"] = level.unary_rps
                        self.figures["unary_p99_ms"] = level.unary_p99_ms
                        self.figures["echo_rps"] = level.echo_rps
            finally:
                if pf_channel is not None:
                    await pf_channel.close(None)

    async def ingest(self, address: str, url: str) -> None:
        config = self.config
        runs = session_runs()
        prefix = next(runs).prefix
        async with load.channel(address) as channel:
            result, problem = await ingest.run_ingest(
                channel,
                runs,
                events=config.ingest_events,
                operations_per_request=config.operations_per_request,
                clients=config.ingest_clients,
                max_seconds=config.ingest_max_seconds,
            )
        if result.errors:
            self.note(f"ingest: {result.errors} failed requests, first: {problem}")
        written = ingest.count_outbox_events(url, prefix)
        if written != result.count:
            self.note(
                f"ingest: {result.count} operations accepted but {written} "
                "outbox events written"
            )
        self.figures["ingest_eps"] = (
            written / result.seconds if result.seconds else None
        )
        self.note(
            f"ingest: {written:,} events in {result.seconds:.1f}s from "
            f"{config.ingest_clients} clients"
        )

        rows = ingest.read_rows(url, prefix)
        copy = ingest.copy_rows(self.databases.create_migrated("copy"), rows)
        self.figures["copy_eps"] = copy.rate
        log.info("copy %d events in %.2fs", copy.count, copy.seconds)

    def lag(self, address: str, url: str, server: processes.Child) -> None:
        config = self.config
        relay = processes.start(
            "relay-lag",
            processes.processflow_command("relay", "--database-url", url),
            self.log_dir,
        )
        try:
            # Catch up with the events of the earlier measurements first.
            _, _, left = drain.wait_until_drained(
                url, relay, config.catch_up_max_seconds
            )
            if left:
                self.note(
                    f"lag: {left:,} earlier events still pending when the "
                    "paced load started"
                )
            since = dt.datetime.now(dt.UTC).replace(tzinfo=None)

            async def paced() -> None:
                async with load.channel(address) as channel:
                    result, problem = await load.run_paced(
                        load.ProcessFlowTarget(channel),
                        session_runs(),
                        rate_per_second=config.lag_rate_per_second,
                        duration_seconds=config.lag_seconds,
                        clients=config.lag_clients,
                        # Unary calls at this rate would saturate the server
                        # (see the unary figures), and the lag would measure
                        # its queue; Ingest requests of a few sessions keep
                        # it well below its capacity.
                        calls_of=functools.partial(
                            ingest_calls, sessions=config.lag_sessions_per_request
                        ),
                    )
                if result.errors:
                    self.note(f"lag: {result.errors} errors, first: {problem}")
                self.note(
                    f"coverage lag measured at {result.rate:,.0f} events/s "
                    f"(target rate {config.lag_rate_per_second:,.0f}), in "
                    f"Ingest requests of {config.lag_sessions_per_request} "
                    "sessions"
                )

            asyncio.run(paced())
            _, _, left = drain.wait_until_drained(
                url, relay, config.catch_up_max_seconds
            )
            if left:
                self.note(
                    f"lag: {left:,} events still pending at the end; their "
                    "lag is not counted, so the figures flatter"
                )
            lags = drain.coverage_lags_ms(url, since)
            if lags:
                self.figures["lag_p50_ms"] = percentile(lags, 0.50)
                self.figures["lag_p99_ms"] = percentile(lags, 0.99)
            self._relay_peak(relay.peak_rss_mib())
        finally:
            relay.stop()

    def _relay_peak(self, value: float | None) -> None:
        if value is not None:
            self.relay_peaks.append(value)
            self.figures["relay_rss_mb"] = max(self.relay_peaks)

    # Phase 2 -----------------------------------------------------------------

    def drain_phase(self) -> None:
        config = self.config
        events = drain.backlog_events(session_runs(), config.backlog_events)
        same = self.databases.create_migrated("drain")
        result, rss, left = drain.drain(
            same, None, events, self.log_dir, "relay-same", config.drain_max_seconds
        )
        self._drain_note("same database", left, len(events))
        if not left:
            self._check_legacy(same, len(events))
        self.figures["relay_eps"] = result.rate
        self._relay_peak(rss)
        log.info(
            "relay same database: %d events in %.2fs", result.count, result.seconds
        )
        self.databases.drop_all()

        events = drain.backlog_events(session_runs(), config.backlog_events)
        legacy = self.databases.create("drainlegacy")
        main = self.databases.create("drainmain")
        from processflow import migrate

        migrate.upgrade(main, legacy)
        result, rss, left = drain.drain(
            main,
            legacy,
            events,
            self.log_dir,
            "relay-separate",
            config.drain_max_seconds,
        )
        self._drain_note("separate database", left, len(events))
        if not left:
            self._check_legacy(legacy, len(events))
        self.figures["relay_separate_eps"] = result.rate
        self._relay_peak(rss)
        log.info(
            "relay separate database: %d events in %.2fs", result.count, result.seconds
        )

    def _drain_note(self, where: str, left: int, events: int) -> None:
        if left:
            self.note(
                f"relay drain ({where}): {left:,} of {events:,} events still "
                f"pending after {self.config.drain_max_seconds:g}s; the rate "
                "counts the settled ones"
            )

    def _check_legacy(self, legacy_url: str, events: int) -> None:
        counts = drain.legacy_row_counts(legacy_url)
        if counts["processflow_applied_events"] != events:
            self.note(
                f"relay: {events} events in the backlog but "
                f"{counts['processflow_applied_events']} in the ledger"
            )

    # Phase 3 -----------------------------------------------------------------

    def peer_queue_phase(self) -> None:
        events = drain.backlog_events(session_runs(), self.config.peer_queue_events)
        url = self.databases.create_migrated("peer")
        result = asyncio.run(
            peer_queue.run_peer_queue(url, events, self.config.peer_queue_max_seconds)
        )
        self.figures["peer_queue_eps"] = result.rate
        log.info("procrastinate: %d events in %.2fs", result.count, result.seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ProcessFlow against its baselines on this machine.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller run of about two minutes"
    )
    parser.add_argument(
        "--output",
        default="docs/BENCHMARKS.md",
        help="Markdown report to write; '-' writes none",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated phases to leave out: server, drain, peer",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s bench: %(message)s"
    )
    # One line per job would cost the baseline more than its jobs do.
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    config = QUICK if args.quick else FULL
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    started = time.monotonic()

    has_server = command_available("serve")
    has_relay = command_available("relay")
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as log_dir, Databases() as dbs:
        machine = read_machine(dbs.server_version())
        run = Run(config, dbs, Path(log_dir))
        if not has_server:
            run.note(
                "`processflow serve` is not available: server figures not measured"
            )
        if not has_relay:
            run.note("`processflow relay` is not available: relay figures not measured")
        # Each phase's databases are dropped when it ends, so that the next
        # one does not share the machine with their autovacuum.
        if "server" not in skip:
            run.server_phase(has_server, has_relay)
            dbs.drop_all()
        if "drain" not in skip and has_relay:
            run.drain_phase()
            dbs.drop_all()
        if "peer" not in skip:
            run.peer_queue_phase()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    run.note(
        f"load average at the end (1, 5, 15 min): {load} on "
        f"{os.cpu_count()} cores; other work on the machine lowers every figure"
    )
    run.note(
        f"sizes: {config.unary_seconds:g}s per unary level, "
        f"{config.ingest_events:,} ingested events, "
        f"{config.backlog_events:,}-event relay backlog, "
        f"up to {config.peer_queue_events:,} procrastinate jobs, "
        f"{config.lag_seconds:g}s of paced load; "
        f"run took {time.monotonic() - started:.0f}s"
    )
    figures = summary(run.figures)
    if args.output != "-":
        report = Report(
            mode=config.mode,
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine,
            figures=figures,
            levels=run.levels,
            notes=run.notes,
        )
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(render_markdown(report))
    print(json.dumps(figures))
    return 0
