"""Hypothesis profiles: "ci" (the default under CI=true) keeps the suite
fast; "thorough" is for a run by hand (HYPOTHESIS_PROFILE=thorough)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.conftest import IN_CI

COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=30, derandomize=True, **COMMON)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=40, **COMMON)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=500, **COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))
