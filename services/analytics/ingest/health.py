"""What operators alert on for ingestion: when it last committed, how far behind it is.

Gauges per process; with replicas, Prometheus takes the max over them. The newest
committed request time is what "complete until" can honestly promise: counts are
final up to the counting grace before it, so when it stalls, so does completeness.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from services.analytics.ingest.store import StagedBatch

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


FAILED_BATCHES = Counter(
    "podmesh_ingest_failed_batches_total",
    "Batches answered with an error (a peer or PostgreSQL down, a quota passed...)",
    ["error"],
)
# A failed batch leaves reference cycles: its exception's traceback holds the frames
# that hold the batch's records, and the asyncio tasks that ran it hold the exception.
# Ingestion raises the collector's thresholds (a batch's objects are not cycles), so
# such cycles waited for a rare full collection: while every batch failed the process
# grew from 170 to 309 MB. Collecting at most this often while batches fail bounds it.
COLLECT_EVERY_S = 1.0
_last_collect = 0.0


def observe_failure(error: BaseException) -> None:
    FAILED_GROUPS.labels(type(error).__name__).inc()


def batch_failed(error: BaseException) -> None:
    global _last_collect
    FAILED_BATCHES.labels(type(error).__name__).inc()
    now = time.monotonic()
    if now - _last_collect >= COLLECT_EVERY_S:
        _last_collect = now
        gc.collect()
