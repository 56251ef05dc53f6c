"""What operators alert on for ingestion: when it last committed, how far behind it is.

Gauges per process; with replicas, Prometheus takes the max over them. The newest
committed request time is what "complete until" can honestly promise: counts are
final up to the counting grace before it, so when it stalls, so does completeness.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from services.analytics.ingest_store import StagedBatch

LAST_COMMIT = Gauge(
    "podmesh_ingest_last_commit_timestamp_seconds",
    "When this process last committed a group of ingested batches (Unix time)",
)
NEWEST_REQUEST = Gauge(
    "podmesh_ingest_newest_request_timestamp_seconds",
    "The newest request time among the batches this process committed (Unix time)",
)
FAILED_GROUPS = Counter(
    "podmesh_ingest_failed_groups_total",
    "Groups of batches whose transaction failed (the batches are answered with an error)",
    ["error"],
)


def observe_commit(batches: Iterable[StagedBatch]) -> None:
    LAST_COMMIT.set(time.time())
    newest_us = max((request.time_us for batch in batches for request in batch.requests), default=0)
    if newest_us / 1e6 > NEWEST_REQUEST._value.get():
        NEWEST_REQUEST.set(newest_us / 1e6)


def observe_failure(error: BaseException) -> None:
    FAILED_GROUPS.labels(type(error).__name__).inc()
