"""The machine description and the Markdown report written to
docs/BENCHMARKS.md. Everything here is pure apart from reading /proc."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import TARGETS, target_met


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu_model: str
    memory_gib: float
    postgres: str

    def describe(self) -> str:
        return (
            f"{self.cores} cores ({self.cpu_model}), {self.memory_gib:.1f} GiB memory, "
            f"{self.postgres}"
        )


def read_machine(postgres_version: str) -> Machine:
    cpu_model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    except OSError:
        pass
    return Machine(
        cores=os.cpu_count() or 0,
        cpu_model=cpu_model,
        memory_gib=memory_kib / 1024 / 1024,
        postgres=postgres_version,
    )


@dataclass(frozen=True)
class UnaryLevel:
    """One concurrency level of the unary comparison."""

    concurrency: int
    unary_rps: float | None
    unary_p50_ms: float | None
    unary_p99_ms: float | None
    echo_rps: float | None
    echo_p50_ms: float | None
    echo_p99_ms: float | None


@dataclass
class Report:
    mode: str
    date: str
    machine: Machine
    figures: Mapping[str, float | None]
    levels: Sequence[UnaryLevel] = ()
    notes: list[str] = field(default_factory=list)


# (label, ProcessFlow key, baseline label, baseline key, ratio key, unit)
_ROWS = (
    (
        "Unary writes, concurrency 16",
        "unary_rps",
        "grpc.aio echo",
        "echo_rps",
        "unary_ratio",
        "calls/s",
    ),
    (
        "Ingest, 500 operations a request",
        "ingest_eps",
        "psycopg COPY",
        "copy_eps",
        "ingest_ratio",
        "events/s",
    ),
    (
        "Relay drain, same database",
        "relay_eps",
        "procrastinate, a job an event",
        "peer_queue_eps",
        "relay_ratio",
        "events/s",
    ),
    ("Relay drain, separate database", "relay_separate_eps", "", "", "", "events/s"),
    ("Unary p99 latency, concurrency 16", "unary_p99_ms", "", "", "", "ms"),
    ("Coverage lag p50 at 1,000 events/s", "lag_p50_ms", "", "", "", "ms"),
    ("Coverage lag p99 at 1,000 events/s", "lag_p99_ms", "", "", "", "ms"),
    ("Server peak resident memory", "server_rss_mb", "", "", "", "MiB"),
    ("Relay peak resident memory", "relay_rss_mb", "", "", "", "MiB"),
)


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if digits == 0 and abs(value) >= 10:
        return f"{value:,.0f}"
    return f"{value:,.{max(digits, 2)}f}"


def _target_text(key: str) -> str:
    if key not in TARGETS:
        return ""
    comparison, bound = TARGETS[key]
    sign = "≥" if comparison == ">=" else "≤"
    return f"{sign} {number(bound) if bound >= 10 else bound}"


def _met_text(key: str, value: float | None) -> str:
    met = target_met(key, value)
    return "" if met is None else ("yes" if met else "**no**")


def render_summary_table(figures: Mapping[str, float | None]) -> str:
    lines = [
        "| measurement | ProcessFlow | baseline | baseline figure | ratio "
        "| target | met |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for label, key, base_label, base_key, ratio_key, unit in _ROWS:
        value = figures.get(key)
        base = number(figures.get(base_key)) if base_key else ""
        ratio_value = figures.get(ratio_key) if ratio_key else None
        ratio_text = number(ratio_value, 2) if ratio_key else ""
        targets = [
            (k, v) for k, v in ((key, value), (ratio_key, ratio_value)) if k in TARGETS
        ]
        target_text = "; ".join(f"{k} {_target_text(k)}" for k, _ in targets)
        met_text = "; ".join(t for t in (_met_text(k, v) for k, v in targets) if t)
        digits = 2 if unit == "ms" else 0
        lines.append(
            f"| {label} | {number(value, digits)} {unit} | {base_label} | {base} "
            f"| {ratio_text} | {target_text} | {met_text} |"
        )
    return "\n".join(lines)


def render_unary_table(levels: Sequence[UnaryLevel]) -> str:
    lines = [
        "| concurrency | ProcessFlow calls/s | p50 ms | p99 ms "
        "| echo calls/s | p50 ms | p99 ms | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        level_ratio = (
            level.unary_rps / level.echo_rps
            if level.unary_rps is not None and level.echo_rps
            else None
        )
        lines.append(
            f"| {level.concurrency} | {number(level.unary_rps)} "
            f"| {number(level.unary_p50_ms, 2)} | {number(level.unary_p99_ms, 2)} "
            f"| {number(level.echo_rps)} | {number(level.echo_p50_ms, 2)} "
            f"| {number(level.echo_p99_ms, 2)} | {number(level_ratio, 2)} |"
        )
    return "\n".join(lines)


METHOD = """\
## How it is measured

Everything runs on this one machine: the load generator (one asyncio process,
`grpc.aio` clients), the server and relay processes, and PostgreSQL on
127.0.0.1:5432. Every database is created for the run and dropped after it.
Each ProcessFlow figure is measured beside its baseline in the same run.

- **Unary writes**: each client runs sessions one after another, each session
  being StartSession, four RecordStep calls (terminal statuses, one of them a
  prompt-construction step), RecordLlmCall and CompleteSession, every call with
  a request_id. The baseline is a plain `grpc.aio` echo service (a generic
  handler with bytes serializers, `bench/echo.py`) started as its own process
  with the server's options; the echo clients send the very same serialized
  requests and parse the answer back into the request type.
- **Ingest**: `Ingest` requests of 500 operations (the same session mix, each
  operation writing one outbox event) from several clients; events per
  second counted from the outbox. The baseline reads back exactly the rows the
  server wrote (every `process_flow_*` table and the outbox) and loads them
  with psycopg `COPY ... FROM STDIN` into a fresh database of the same schema.
- **Relay drain**: a backlog of pending outbox events (the same mix, written
  with COPY before the relay starts) drained by one `processflow relay`
  process into the legacy tables of the same database, then of a separate
  PostgreSQL database. The baseline applies the same legacy inserts and
  ledger rows with procrastinate, one job per event, on its own database.
- **Coverage lag**: 1,000 events a second, paced, with the relay running,
  sent as `Ingest` requests of five whole sessions (35 writes, about 29
  requests a second): unary calls at that rate would saturate the server
  (see above), and the lag would measure its queue. Lag is the
  applied-event ledger's `applied_at` minus the outbox row's `created_at`
  (the server's clock when the write's transaction began, so the write's
  own time counts), per event.
- **Drains are watched** without slowing them: a count over a 200,000-event
  backlog takes PostgreSQL 40 to 80 ms, so pending rows are counted only until
  the first event settles (each count spaced ten times as long as the last
  one took), then an `EXISTS` probe of the pending index polls for the end.
- **Memory**: peak resident set (`VmHWM` in `/proc/PID/status`) of the server
  process over the whole run and of the largest relay process.
"""


def render_markdown(report: Report) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (full run) or `make bench-quick`; do not edit "
        "by hand.",
        "",
        f"- Date: {report.date}",
        f"- Run: {report.mode}",
        f"- Machine: {report.machine.describe()}",
        "",
        "## Summary",
        "",
        render_summary_table(report.figures),
        "",
        "## Unary writes by concurrency",
        "",
        render_unary_table(report.levels),
        "",
    ]
    if report.notes:
        parts += ["## Notes on this run", ""]
        parts += [f"- {note}" for note in report.notes]
        parts.append("")
    parts += [METHOD]
    return "\n".join(parts)
