"""Benchmarks: `make bench` runs them all (see __main__)."""

from __future__ import annotations

import os


def scale() -> float:
    """BENCH_SCALE: the share of each benchmark's full data to use (default 1.0)."""
    return float(os.environ.get("BENCH_SCALE", "1.0"))
