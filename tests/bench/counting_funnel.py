"""What the counting funnel adds to counting: ``python -m tests.bench.counting_funnel``.

The requests of tests.bench.counting, in batches of 5,000 in arrival order; per batch
the accumulator's ``apply`` (what ingestion did before the funnel) and then what
ingestion adds for the funnel: each request's arrival (filtered, late, countable), the
funnel deltas summed per day bucket, and the rollup rows. Best of three passes.

Prints ``funnel_requests_per_s`` (the funnel's own work), ``counting_with_funnel_requests_per_s``
and ``funnel_share_of_counting`` (funnel time / apply time).
"""

from __future__ import annotations

import gc
import time

from services.analytics.counting import (
    CountingSettings,
    CountingWindow,
    DownloadAccumulator,
    EpisodeMedia,
    compile_rules,
)
from services.analytics.counting.funnel import arrivals, funnel_changes
from services.analytics.ingest.funnel_rollup import FunnelRollup, FunnelScope
from tests.bench.counting import BATCH, Row, build, synthetic_rows

PASSES = 3


def one_pass(rows: list[Row], media: dict[str, EpisodeMedia]) -> tuple[float, float, int]:
    """Seconds applying, seconds on the funnel, rollup rows written."""
    gc.collect()
    rules = compile_rules(CountingSettings(window=CountingWindow.UTC_DAY))
    accumulator = DownloadAccumulator(rules)
    scope = FunnelScope(CountingWindow.UTC_DAY, "America/New_York")
    apply_s = funnel_s = 0.0
    written = 0
    for offset in range(0, len(rows), BATCH):
        batch = build(rows[offset : offset + BATCH], offset)
        started = time.perf_counter()
        delta = accumulator.apply(batch, media)
        applied = time.perf_counter()
        rollup = FunnelRollup(scope)
        rollup.add(funnel_changes(batch, arrivals(batch, delta, rules), delta, rollup.bucket))
        funneled = time.perf_counter()
        apply_s += applied - started
        funnel_s += funneled - applied
        written += len(rollup.rows)
    return apply_s, funnel_s, written


def main() -> None:
    rows, media = synthetic_rows()
    passes = [one_pass(rows, media) for _ in range(PASSES)]
    apply_s = min(p[0] for p in passes)
    funnel_s = min(p[1] for p in passes)
    print(f"funnel_requests: {len(rows)}")
    print(f"funnel_rollup_rows_written: {passes[0][2]}")
    print(f"counting_requests_per_s: {len(rows) / apply_s:.0f}")
    print(f"funnel_requests_per_s: {len(rows) / funnel_s:.0f}")
    print(f"counting_with_funnel_requests_per_s: {len(rows) / (apply_s + funnel_s):.0f}")
    print(f"funnel_share_of_counting: {funnel_s / apply_s:.2f}")


if __name__ == "__main__":
    main()
