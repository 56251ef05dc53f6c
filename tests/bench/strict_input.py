"""What the shared input checks cost per request: ``python -m tests.bench.strict_input``.

Times `accept` (the walk for NUL characters and undeclared enum numbers) and the guarded
parse on requests shaped like the largest real ones: an episode write with 50 ad slots
and a long description, a metrics query with 500 episode ids and filters, and an
ingestion batch of 5,000 records, whose records the walk leaves to ingestion. Prints
``strict_input_<request>_us: N`` (microseconds per request, best of several runs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2
from podmesh.catalog.v1 import catalog_pb2

from services.shared.inputs import InputRule, accept, guarded_deserializer

RUNS = 7


def _best_us(work: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        for _ in range(repeat):
            work()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


def _episode() -> catalog_pb2.UpdateEpisodeRequest:
    slots = [
        catalog_pb2.AdSlot(
            position=catalog_pb2.AD_POSITION_MID_ROLL,
            insertion=catalog_pb2.AD_INSERTION_DYNAMIC,
            start_offset=Duration(seconds=60 * i),
            duration=Duration(seconds=30),
        )
        for i in range(50)
    ]
    return catalog_pb2.UpdateEpisodeRequest(
        episode=catalog_pb2.Episode(
            id=str(uuid.uuid4()),
            title="An episode title of ordinary length",
            description="Show notes. " * 8000,
            ad_slots=slots,
        )
    )


def _query() -> analytics_pb2.QueryMetricsRequest:
    return analytics_pb2.QueryMetricsRequest(
        start_time=Timestamp(seconds=1_700_000_000),
        end_time=Timestamp(seconds=1_702_000_000),
        time_zone="Europe/Berlin",
        episode_ids=[str(uuid.uuid4()) for _ in range(500)],
        metrics=[analytics_pb2.METRIC_DOWNLOADS, analytics_pb2.METRIC_LISTENERS],
        apps=[f"App {i}" for i in range(100)],
        country_codes=["US", "DE", "GB"],
    )


def _batch() -> analytics_pb2.StreamListenerEventsRequest:
    record = analytics_pb2.ListenerRequest(
        id="r",
        request_time=Timestamp(seconds=1_700_000_000),
        media_url="https://cdn.example.com/show/episode-1.mp3",
        client_ip="192.0.2.10",
        user_agent="AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X; en_us)",
        http_method="GET",
        status_code=206,
        range="bytes=0-1",
    )
    return analytics_pb2.StreamListenerEventsRequest(sequence=1, requests=[record] * 5000)


def _report(name: str, message: Message, rule: InputRule, repeat: int) -> None:
    raw = message.SerializeToString()
    parse = guarded_deserializer(type(message).FromString, rule.max_bytes)
    walk_us = _best_us(lambda: accept(message, rule), repeat)
    parse_us = _best_us(lambda: parse(raw), repeat)
    print(f"{name}: {len(raw):,} bytes, parse {parse_us:.0f} us, walk {walk_us:.1f} us")
    print(f"strict_input_{name}_us: {walk_us:.1f}")


def main() -> None:
    _report("episode_write", _episode(), InputRule(max_bytes=3 << 20), 200)
    _report("metrics_query", _query(), InputRule(max_bytes=256 << 10), 200)
    batch_rule = InputRule(max_bytes=8 << 20, unchecked_fields=frozenset({"requests"}))
    _report("ingest_batch", _batch(), batch_rule, 20)


if __name__ == "__main__":
    main()
