"""The catalog issue's benchmark: importing a 1,000-episode feed, then GetEpisode
and SearchEpisodes latency through Envoy's JSON gateway under 16 concurrent clients,
against Envoy's own /ready and a catalog call refused before any work, measured the
same way in the same run.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on).
BENCH_SCALE=1.0 imports 1,000 episodes and sends 4,000 requests per measurement;
BENCH_SCALE=0.1 a tenth of both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

import grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.catalog.support import FeedServer, generated_feed  # noqa: E402
from tests.support import create_tenant  # noqa: E402

FULL_EPISODES = 1_000
FULL_REQUESTS = 4_000
CLIENTS = 16
# The topics generated_feed() writes about, some misspelled as people type them.
QUERIES = ("astronomy", "gardenning", "jazz history", "chess openings", "cycling", "markets")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def measure(
    requests: int, call: Callable[[int], Awaitable[httpx.Response]], expect: int = 200
) -> tuple[list[float], float]:
    """Latencies of `requests` calls made by CLIENTS concurrent workers, and the wall time."""
    latencies: list[float] = []
    next_request = iter(range(requests))

    async def worker() -> None:
        for n in next_request:
            started = time.perf_counter()
            response = await call(n)
            latencies.append(time.perf_counter() - started)
            if response.status_code != expect:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return latencies, time.perf_counter() - began


def report(name: str, latencies: Sequence[float], wall: float) -> float:
    cuts = statistics.quantiles(latencies, n=100)
    rate = len(latencies) / wall
    print(f"{name}_p50_ms: {ms(cuts[49])}")
    print(f"{name}_p95_ms: {ms(cuts[94])}")
    print(f"{name}_requests_per_s: {rate:.0f}")
    return rate


async def run(stack: Stack, feeds: FeedServer) -> None:
    episodes = max(20, round(FULL_EPISODES * scale()))
    requests = max(CLIENTS * 10, round(FULL_REQUESTS * scale()))
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenant = await create_tenant(
            tenant_pb2_grpc.TenantServiceStub(channel), stack.admin_token, "bench"
        )
    auth = {"authorization": f"Bearer {tenant.owner_key}"}
    feed = generated_feed(episodes, title="Bench Weekly", host="bench")
    url = feeds.serve("/bench.xml", feed)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60, limits=limits) as http:
        began = time.perf_counter()
        imported = await http.post(
            "/api/v1/podcasts:importFeed", json={"feedUrl": url}, headers=auth
        )
        import_s = time.perf_counter() - began
        body: dict[str, Any] = imported.json()
        if imported.status_code != 200 or body["createdEpisodeCount"] != episodes:
            raise RuntimeError(f"import failed: {imported.text[:500]}")
        began = time.perf_counter()
        again = await http.post("/api/v1/podcasts:importFeed", json={"feedUrl": url}, headers=auth)
        reimport_s = time.perf_counter() - began
        assert again.json()["unchangedEpisodeCount"] == episodes
        print(f"feed_episodes: {episodes}")
        print(f"feed_bytes: {len(feed)}")
        print(f"import_seconds: {import_s:.3f}")
        print(f"reimport_unchanged_seconds: {reimport_s:.3f}")

        podcast_id = body["podcast"]["id"]
        ids: list[str] = []
        params: dict[str, Any] = {"pageSize": 200}
        while True:
            page = (
                await http.get(
                    f"/api/v1/podcasts/{podcast_id}/episodes", params=params, headers=auth
                )
            ).json()
            ids += [e["id"] for e in page["episodes"]]
            if not page.get("nextPageToken"):
                break
            params["pageToken"] = page["nextPageToken"]

        print(f"clients: {CLIENTS}")
        print(f"requests_per_measurement: {requests}")
        get_rate = report(
            "get_episode",
            *await measure(
                requests,
                lambda n: http.get(f"/api/v1/episodes/{ids[n * 7919 % len(ids)]}", headers=auth),
            ),
        )
        search_rate = report(
            "search_episodes",
            *await measure(
                requests,
                lambda n: http.get(
                    "/api/v1/episodes:search",
                    params={"query": QUERIES[n % len(QUERIES)], "pageSize": 20},
                    headers=auth,
                ),
            ),
        )
        report(
            "search_podcasts",
            *await measure(
                requests,
                lambda n: http.get(
                    "/api/v1/podcasts:search", params={"query": "bench weekly"}, headers=auth
                ),
            ),
        )
        # The same path through Envoy and the transcoder into the catalog, refused
        # by its interceptor before any database work: the floor for any catalog call.
        refused_rate = report(
            "refused_call",
            *await measure(requests, lambda n: http.get(f"/api/v1/episodes/{ids[0]}"), expect=401),
        )
    async with httpx.AsyncClient(
        base_url=stack.envoy_admin_url, timeout=60, limits=limits
    ) as admin:
        ready_rate = report("envoy_ready", *await measure(requests, lambda n: admin.get("/ready")))
    print(f"get_vs_refused_ratio: {get_rate / refused_rate:.2f}")
    print(f"search_vs_refused_ratio: {search_rate / refused_rate:.2f}")
    print(f"get_vs_envoy_ready_ratio: {get_rate / ready_rate:.2f}")


async def main() -> None:
    run_dir = ROOT / ".run" / f"bench-catalog-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with (
        Stack(
            run_dir,
            ports=PortPlan.free(),
            fast_postgres=False,
            service_env_extra={"PODMESH_FEED_ALLOW_PRIVATE_ADDRESSES": "true"},
        ) as stack,
    ):
        with FeedServer() as feeds:
            await run(stack, feeds)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
