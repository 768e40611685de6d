"""Pure arithmetic of the benchmark: percentiles, rates, ratios and the JSON
summary whose keys are a stable contract (the issue lists them)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The keys of the JSON line, in the order they are printed.
JSON_KEYS = (
    "unary_rps",
    "echo_rps",
    "unary_ratio",
    "unary_p99_ms",
    "ingest_eps",
    "copy_eps",
    "ingest_ratio",
    "relay_eps",
    "peer_queue_eps",
    "relay_ratio",
    "lag_p50_ms",
    "lag_p99_ms",
    "server_rss_mb",
    "relay_rss_mb",
)
EXTRA_JSON_KEYS = ("relay_separate_eps",)

# Targets of the full run: key -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "unary_ratio": (">=", 0.6),
    "unary_p99_ms": ("<=", 25.0),
    "ingest_eps": (">=", 25_000.0),
    "ingest_ratio": (">=", 0.25),
    "relay_eps": (">=", 20_000.0),
    "relay_separate_eps": (">=", 10_000.0),
    "relay_ratio": (">=", 50.0),
    "lag_p50_ms": ("<=", 20.0),
    "lag_p99_ms": ("<=", 100.0),
    "server_rss_mb": ("<=", 200.0),
    "relay_rss_mb": ("<=", 150.0),
}


# A drain is watched by counting what is left, and a count over a large
# backlog costs the database tens of milliseconds: polled back to back it
# would take a core from the very drain it times. Waiting ten times as long
# as the last count took keeps the watcher under a tenth of a core.
MIN_POLL_SECONDS = 0.02
POLL_COST_SHARE = 0.1


def poll_delay(count_seconds: float) -> float:
    """Seconds to wait before the next count, given what the last one took."""
    return max(MIN_POLL_SECONDS, count_seconds / POLL_COST_SHARE)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1), interpolated between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within 0..1, got {fraction}")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = math.ceil(position)
    weight = position - below
    return ordered[below] * (1.0 - weight) + ordered[above] * weight


@dataclass(frozen=True)
class Throughput:
    """Calls (or events) completed in a measured interval, with their latencies."""

    count: int
    seconds: float
    latencies_ms: tuple[float, ...] = ()
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latencies_ms, 0.50) if self.latencies_ms else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 0.99) if self.latencies_ms else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rounded(value: float | None) -> float | None:
    """Three significant decimals for small numbers, whole units for large."""
    if value is None:
        return None
    if abs(value) >= 100:
        return round(value, 1)
    return round(value, 3)


def summary(figures: Mapping[str, float | None]) -> dict[str, float | None]:
    """The JSON object: every key present (None when not measured), ratios
    derived from their two figures."""
    unknown = set(figures) - set(JSON_KEYS) - set(EXTRA_JSON_KEYS)
    if unknown:
        raise KeyError(f"not a benchmark figure: {sorted(unknown)}")
    values: dict[str, float | None] = {k: figures.get(k) for k in JSON_KEYS}
    values["unary_ratio"] = ratio(values["unary_rps"], values["echo_rps"])
    values["ingest_ratio"] = ratio(values["ingest_eps"], values["copy_eps"])
    values["relay_ratio"] = ratio(values["relay_eps"], values["peer_queue_eps"])
    for key in EXTRA_JSON_KEYS:
        values[key] = figures.get(key)
    return {key: rounded(value) for key, value in values.items()}


def target_met(key: str, value: float | None) -> bool | None:
    """Whether ``value`` meets its target; None without a target or a value."""
    if key not in TARGETS or value is None:
        return None
    comparison, bound = TARGETS[key]
    return value >= bound if comparison == ">=" else value <= bound
