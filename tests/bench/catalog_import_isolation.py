"""The catalog's tenant isolation under a large import: another tenant's GetPodcast
and ListEpisodes latency while one tenant imports a 20,000-item feed, against the
same calls with the catalog idle, measured the same way in the same run.

Starts its own platform with durable PostgreSQL and calls the catalog's own gRPC
port (no gateway), so the figures are the catalog's. BENCH_SCALE=1.0 imports
20,000 items; BENCH_SCALE=0.1 a tenth. BENCH_FEED_OFFLOAD=process|thread picks
where the catalog parses feeds (PODMESH_FEED_OFFLOAD), to compare the two.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

import grpc  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2 as pb  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.catalog.support import FeedServer, generated_feed  # noqa: E402
from tests.support import bearer, create_tenant  # noqa: E402

FULL_ITEMS = 20_000
READER_EPISODES = 200
READERS = 4
IDLE_REQUESTS = 2_000
MIB = 1024 * 1024


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def cuts(latencies: Sequence[float]) -> tuple[float, float]:
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49], quantiles[94]


async def read(
    stub: catalog_pb2_grpc.CatalogServiceAsyncStub,
    key: str,
    podcast_id: str,
    until: asyncio.Future[Any] | None,
    requests: int,
) -> list[float]:
    """Latencies of GetPodcast and ListEpisodes, alternating, from READERS
    concurrent clients: `requests` of them, or as many as fit before `until`."""
    latencies: list[float] = []
    sent = iter(range(requests if until is None else sys.maxsize))

    async def reader() -> None:
        for n in sent:
            if until is not None and until.done():
                return
            started = time.perf_counter()
            if n % 2:
                await stub.ListEpisodes(
                    pb.ListEpisodesRequest(podcast_id=podcast_id, page_size=50),
                    metadata=bearer(key),
                )
            else:
                await stub.GetPodcast(
                    pb.GetPodcastRequest(podcast_id=podcast_id), metadata=bearer(key)
                )
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(reader() for _ in range(READERS)))
    return latencies


async def run(stack: Stack, feeds: FeedServer) -> None:
    items = max(200, round(FULL_ITEMS * scale()))
    requests = max(READERS * 50, round(IDLE_REQUESTS * scale()))
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        importer = await create_tenant(tenants, stack.admin_token, "bulk")
        bystander = await create_tenant(tenants, stack.admin_token, "calm")
    big = generated_feed(items, title="Bulk Archive", host="bulk")
    small = generated_feed(READER_EPISODES, title="Calm Weekly", host="calm")
    big_url = feeds.serve("/bulk.xml", big)
    small_url = feeds.serve("/calm.xml", small)
    async with grpc.aio.insecure_channel(
        stack.service_addr("catalog"),
        options=[("grpc.max_receive_message_length", 64 * MIB)],
    ) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        calm = await stub.ImportFeed(
            pb.ImportFeedRequest(feed_url=small_url), metadata=bearer(bystander.owner_key)
        )
        podcast_id = calm.podcast.id
        # Warm the reader's connections, caches and plans before measuring.
        await read(stub, bystander.owner_key, podcast_id, None, READERS * 20)
        idle = await read(stub, bystander.owner_key, podcast_id, None, requests)

        began = time.perf_counter()
        bulk = asyncio.ensure_future(
            stub.ImportFeed(
                pb.ImportFeedRequest(feed_url=big_url), metadata=bearer(importer.owner_key)
            )
        )
        busy = await read(stub, bystander.owner_key, podcast_id, bulk, 0)
        result = await bulk
        import_s = time.perf_counter() - began
        if result.created_episode_count != items:
            raise RuntimeError(f"imported {result.created_episode_count} of {items} items")

    idle_p50, idle_p95 = cuts(idle)
    busy_p50, busy_p95 = cuts(busy)
    print(f"feed_offload: {os.environ.get('BENCH_FEED_OFFLOAD', 'default')}")
    print(f"import_items: {items}")
    print(f"import_feed_bytes: {len(big)}")
    print(f"import_seconds: {import_s:.2f}")
    print(f"readers: {READERS}")
    print(f"reads_idle: {len(idle)}")
    print(f"reads_during_import: {len(busy)}")
    print(f"read_idle_p50_ms: {ms(idle_p50)}")
    print(f"read_idle_p95_ms: {ms(idle_p95)}")
    print(f"read_during_import_p50_ms: {ms(busy_p50)}")
    print(f"read_during_import_p95_ms: {ms(busy_p95)}")
    print(f"import_slowdown_p50_ratio: {busy_p50 / idle_p50:.2f}")
    print(f"import_slowdown_p95_ratio: {busy_p95 / idle_p95:.2f}")


async def main() -> None:
    run_dir = ROOT / ".run" / f"bench-catalog-import-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {
        "PODMESH_FEED_ALLOW_PRIVATE_ADDRESSES": "true",
        # 20,000 generated items are about 12 MB, over the 5 MB default.
        "PODMESH_FEED_MAX_BYTES": str(64 * MIB),
        "PODMESH_FEED_TIMEOUT_S": "60",
    }
    if os.environ.get("BENCH_FEED_OFFLOAD"):
        env["PODMESH_FEED_OFFLOAD"] = os.environ["BENCH_FEED_OFFLOAD"]
    async with Stack(
        run_dir, ports=PortPlan.free(), fast_postgres=False, service_env_extra=env
    ) as stack:
        with FeedServer() as feeds:
            await run(stack, feeds)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
