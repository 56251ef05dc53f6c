"""Benchmarks 1, 2 and 4 of the analytics issue: ingestion through Envoy until durable
and counted, against a raw COPY of the same rows; the JSON batch path; the analytics
server's peak memory.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on).
BENCH_SCALE=1.0 streams 5,000,000 requests; BENCH_SCALE=0.1 a tenth of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
import grpc
import httpx
from google.protobuf import json_format

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.analytics.v1 import analytics_pb2 as pb  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from services.analytics.counting import DAY_US, IpExclusions, IpHasher  # noqa: E402
from services.analytics.ingest.records import RAW_COLUMNS, Episode, check_batch  # noqa: E402
from tests.analytics_ingest_support import (  # noqa: E402
    EpisodeSpec,
    api_key,
    batches,
    create_episodes,
    listener_traffic,
)
from tests.support import create_tenant  # noqa: E402

FULL_SIZE = 5_000_000
BATCH = 5_000
STREAMS = 4
IN_FLIGHT = 4
# Batches per connection built ahead of each timed round of the COPY baseline.
COPY_ROUND = 20
JSON_SHARE = 0.04
JSON_BATCH = 1_000
JSON_CLIENTS = 4
METHOD = "/podmesh.analytics.v1.AnalyticsService/StreamListenerEvents"
HOUR_US = 3_600_000_000


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def stream_bodies(
    episodes: Sequence[EpisodeSpec], total: int, start_us: int, span_us: int
) -> list[list[bytes]]:
    """Each stream's batches, serialised once: the client's CPU is not what is measured."""
    per_stream = total // STREAMS
    streams: list[list[bytes]] = []
    for index in range(STREAMS):
        traffic = listener_traffic(
            episodes, per_stream, start_us=start_us, span_us=span_us, seed=100 + index
        )
        streams.append(
            [
                pb.StreamListenerEventsRequest(requests=batch).SerializeToString()
                for batch in batches(traffic, BATCH)
            ]
        )
    return streams


async def stream_all(channel: grpc.aio.Channel, key: str, bodies: list[bytes]) -> int:
    """Sends every batch with IN_FLIGHT unacknowledged; returns the records acknowledged."""
    call_factory = channel.stream_stream(
        METHOD,
        request_serializer=None,
        response_deserializer=pb.StreamListenerEventsResponse.FromString,
    )
    window = asyncio.Semaphore(IN_FLIGHT)

    async def requests() -> Iterator[bytes]:  # type: ignore[misc]
        for sequence, body in enumerate(bodies, start=1):
            await window.acquire()
            yield pb.StreamListenerEventsRequest(sequence=sequence).SerializeToString() + body

    acknowledged = 0
    call = call_factory(requests(), metadata=(("authorization", f"Bearer {key}"),))
    async for ack in call:
        acknowledged += ack.accepted_count + ack.duplicate_count + len(ack.rejections)
        window.release()
    return acknowledged


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_kib(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def copy_rows(
    episodes: Sequence[EpisodeSpec], bodies: list[bytes], tenant_id: uuid.UUID, secret: str
) -> AsyncIterator[list[tuple[object, ...]]]:
    """The rows ingestion writes for these batches, for another tenant."""
    by_id = {e.episode_id: Episode(e.episode_id, e.podcast_id) for e in episodes}
    by_url = {e.media_url: Episode(e.episode_id, e.podcast_id) for e in episodes}
    hasher = IpHasher(secret.encode(), tenant_id)
    now_us = time.time_ns() // 1000
    for body in bodies:
        checked = await check_batch(
            pb.StreamListenerEventsRequest.FromString(body).requests,
            tenant_id=tenant_id,
            by_id=by_id,
            by_url=by_url,
            hasher=hasher,
            exclusions=IpExclusions(),
            now_us=now_us,
            oldest_us=now_us - 30 * DAY_US,
        )
        yield list(checked.rows)


async def copy_baseline(
    stack: Stack, episodes: Sequence[EpisodeSpec], streams: list[list[bytes]]
) -> tuple[int, float]:
    """Raw COPY of the same rows into listener_requests, one connection per stream and
    one durable transaction per batch, as fast as PostgreSQL takes them.

    The rows are built ahead, a few batches per connection at a time, and only the
    copying is timed: all connections copy at once, and each round lasts until the
    last of them is done.
    """
    tenant_id = uuid.uuid4()
    secret = stack.secrets.ip_hash_secret
    connections = [await asyncpg.connect(stack.owner_dsn) for _ in streams]
    copied, elapsed = 0, 0.0

    async def copy(conn: asyncpg.Connection, batches: list[list[tuple[object, ...]]]) -> None:
        for rows in batches:
            await conn.copy_records_to_table("listener_requests", records=rows, columns=RAW_COLUMNS)

    try:
        for start in range(0, max(len(bodies) for bodies in streams), COPY_ROUND):
            rounds = [
                [
                    rows
                    async for rows in copy_rows(
                        episodes, bodies[start : start + COPY_ROUND], tenant_id, secret
                    )
                ]
                for bodies in streams
            ]
            began = time.perf_counter()
            await asyncio.gather(*(copy(c, r) for c, r in zip(connections, rounds, strict=True)))
            elapsed += time.perf_counter() - began
            copied += sum(len(rows) for batches in rounds for rows in batches)
    finally:
        for conn in connections:
            await conn.close()
    return copied, elapsed


async def json_path(
    stack: Stack, key: str, episodes: Sequence[EpisodeSpec], total: int, start_us: int
) -> tuple[int, float]:
    bodies: list[str] = []
    traffic = listener_traffic(episodes, total, start_us=start_us, span_us=DAY_US // 24, seed=999)
    for batch in batches(traffic, JSON_BATCH):
        bodies.append(
            json_format.MessageToJson(pb.IngestListenerEventsRequest(requests=batch), indent=None)
        )
    queue: asyncio.Queue[str] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    sent = 0

    async def client() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
            while not queue.empty():
                body = queue.get_nowait()
                response = await http.post(
                    "/api/v1/listenerEvents:ingest",
                    content=body,
                    headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                )
                response.raise_for_status()
                answer = response.json()
                sent += (
                    answer["acceptedCount"] + answer["duplicateCount"] + len(answer["rejections"])
                )

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(JSON_CLIENTS)))
    return sent, time.perf_counter() - began


async def checkpoint(stack: Stack) -> None:
    """Flushes what the phase before wrote, so it does not slow the next one down."""
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def main() -> None:
    total = int(FULL_SIZE * scale())
    run_dir = ROOT / ".run" / f"bench-ingest-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as tenant_channel:
            tenants = tenant_pb2_grpc.TenantServiceStub(tenant_channel)
            tenant = await create_tenant(tenants, stack.admin_token, "bench")
            key = await api_key(tenants, tenant.owner_key)
        async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
            episodes = await create_episodes(
                catalog_pb2_grpc.CatalogServiceStub(gateway), tenant.owner_key, 20, 10
            )
            start_us = time.time_ns() // 1000 - 3 * HOUR_US
            print(f"generating {total:,} requests", flush=True)
            streams = stream_bodies(episodes, total, start_us, 3 * HOUR_US)

            # The baseline first, into a table as empty as ingestion will find it.
            copied, copy_seconds = await copy_baseline(stack, episodes, streams)
            await checkpoint(stack)

            process = stack.process("analytics")
            assert process is not None
            print(f"streaming over {STREAMS} streams (analytics pid {process.pid})", flush=True)
            samples: list[int] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(process.pid, samples, stop))
            began = time.perf_counter()
            acknowledged = sum(
                await asyncio.gather(*(stream_all(gateway, key, bodies) for bodies in streams))
            )
            grpc_seconds = time.perf_counter() - began
            stop.set()
            await sampler
            peak_kib = rss_kib(process.pid, "VmHWM")
            await checkpoint(stack)

            json_total = max(JSON_BATCH, int(total * JSON_SHARE))
            json_sent, json_seconds = await json_path(
                stack, key, episodes, json_total, start_us + 3 * HOUR_US - DAY_US // 24
            )

    shutil.rmtree(run_dir, ignore_errors=True)
    grpc_rate = acknowledged / grpc_seconds
    copy_rate = copied / copy_seconds
    json_rate = json_sent / json_seconds
    quarter = max(1, len(samples) // 4)
    print(
        f"streamed {acknowledged:,} requests in {grpc_seconds:.1f}s over {STREAMS} streams; "
        f"RSS MiB first/last quarter median "
        f"{statistics.median(samples[:quarter]) / 1024:.0f}/"
        f"{statistics.median(samples[-quarter:]) / 1024:.0f}"
    )
    print(f"ingest_grpc_requests_per_s: {grpc_rate:.0f}")
    print(f"ingest_copy_rows_per_s: {copy_rate:.0f}")
    print(f"ingest_vs_copy_ratio: {grpc_rate / copy_rate:.2f}")
    print(f"ingest_json_requests_per_s: {json_rate:.0f}")
    print(f"ingest_json_vs_grpc_ratio: {json_rate / grpc_rate:.2f}")
    print(f"analytics_peak_rss_mb: {peak_kib / 1024:.0f}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
