"""The campaign issue's benchmark: GetPacing for a campaign of 50 line items over a
90-day flight on the analytics benchmark's tenant (20 million listener requests over 90
days at BENCH_SCALE=1.0, seeded through the real ingestion path), as JSON through
Envoy under 16 concurrent clients, against the same call refused before any work
(no credentials) measured the same way in the same run, with the pacing cache as
deployed (answers reused for 5 s) and again with the campaign service restarted without
it; and bookings of distinct slots per second, by 16 concurrent clients, each booking
for its own campaign, against the same calls refused before any work.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on).
BENCH_SCALE=1.0 seeds 20,000,000 requests (25-35 minutes here) and sends 2,000
pacing requests per measurement; BENCH_SCALE=0.01 seeds 200,000 and sends 160.
"""

from __future__ import annotations

import asyncio
import datetime as dt
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
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.analytics_ingest_support import EpisodeSpec, api_key, create_episodes  # noqa: E402
from tests.bench.analytics_queries import (  # noqa: E402
    DAYS,
    EPISODES_EACH,
    FULL_SIZE,
    PODCASTS,
    seed,
)
from tests.bench.wrk import BenchError  # noqa: E402
from tests.support import bearer, create_tenant  # noqa: E402

CLIENTS = 16
LINE_ITEMS = 50
PLACEMENTS_EACH = 4
FULL_REQUESTS = 2_000
UNCACHED = {"PODMESH_PACING_CACHE_TTL_S": "0"}


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def measure(
    count: int, call: Callable[[int], Awaitable[httpx.Response]], expect: int = 200
) -> tuple[list[float], float]:
    """Latencies of `count` calls made by CLIENTS concurrent workers, and the wall time."""
    latencies: list[float] = []
    next_call = iter(range(count))

    async def worker() -> None:
        for n in next_call:
            started = time.perf_counter()
            response = await call(n)
            latencies.append(time.perf_counter() - started)
            if response.status_code != expect:
                raise BenchError(f"{response.status_code}: {response.text[:300]}")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return latencies, time.perf_counter() - began


def report(name: str, latencies: Sequence[float], wall: float) -> float:
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{name}_p50_ms: {ms(cuts[49])}")
    print(f"{name}_p95_ms: {ms(cuts[94])}")
    print(f"{name}_requests_per_s: {len(latencies) / wall:.0f}")
    return cuts[94]


async def ok(response: Awaitable[httpx.Response]) -> Any:
    answer = await response
    if answer.status_code != 200:
        raise BenchError(f"{answer.status_code}: {answer.text[:500]}")
    return answer.json()


async def publish(stack: Stack, key: str, episodes: Sequence[EpisodeSpec]) -> list[tuple[str, str]]:
    """Gives every episode a publish time (bookings need one); returns (episode, slot)."""
    slots: list[tuple[str, str]] = []
    published = dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS + 1)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        for spec in episodes:
            episode = catalog_pb2.Episode(id=spec.episode_id)
            episode.publish_time.FromDatetime(published)
            updated = await catalog.UpdateEpisode(
                catalog_pb2.UpdateEpisodeRequest(
                    episode=episode, update_mask={"paths": ["publish_time"]}
                ),
                metadata=bearer(key),
            )
            slots += [(spec.episode_id, s.id) for s in updated.episode.ad_slots]
    return slots


async def campaign(
    http: httpx.AsyncClient,
    auth: dict[str, str],
    sponsor_id: str,
    start: dt.datetime,
    end: dt.datetime,
    line_items: int,
) -> tuple[str, list[str]]:
    created = await ok(
        http.post(
            "/api/v1/campaigns",
            json={
                "campaign": {
                    "sponsorId": sponsor_id,
                    "displayName": "Bench",
                    "budget": {"currencyCode": "USD", "minorUnits": str(10**13)},
                    "flightStartTime": rfc3339(start),
                    "flightEndTime": rfc3339(end),
                }
            },
            headers=auth,
        )
    )
    campaign_id = created["campaign"]["id"]
    items = []
    for n in range(line_items):
        item = await ok(
            http.post(
                "/api/v1/lineItems",
                json={
                    "lineItem": {
                        "campaignId": campaign_id,
                        "displayName": f"Line {n}",
                        "adType": "AD_TYPE_DYNAMIC",
                        "pricingModel": "PRICING_MODEL_CPM",
                        "rate": {"currencyCode": "USD", "minorUnits": "2500"},
                        "impressionGoal": "100000",
                        "priority": 1 + n % 10,
                    }
                },
                headers=auth,
            )
        )
        items.append(item["lineItem"]["id"])
    for path in (f"/api/v1/campaigns/{campaign_id}", *(f"/api/v1/lineItems/{i}" for i in items)):
        state = "CAMPAIGN_STATE_ACTIVE" if "campaigns" in path else "LINE_ITEM_STATE_ACTIVE"
        await ok(
            http.patch(path, json={"state": state}, params={"updateMask": "state"}, headers=auth)
        )
    return campaign_id, items


def booking(slot: tuple[str, str]) -> dict[str, str]:
    return {"episodeId": slot[0], "adSlotId": slot[1], "impressionGoal": "1000"}


async def run(stack: Stack, total: int, requests: int) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        tenant = await create_tenant(tenants, stack.admin_token, "bench")
        ingest_key = await api_key(tenants, tenant.owner_key)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
        episodes = await create_episodes(
            catalog_pb2_grpc.CatalogServiceStub(gateway), tenant.owner_key, PODCASTS, EPISODES_EACH
        )
    slots = await publish(stack, tenant.owner_key, episodes)
    await seed(stack, ingest_key, tenant.owner_key, episodes, total)
    if len(slots) < LINE_ITEMS * PLACEMENTS_EACH:
        raise BenchError(f"only {len(slots)} ad slots for {LINE_ITEMS * PLACEMENTS_EACH} bookings")

    auth = {"authorization": f"Bearer {tenant.owner_key}"}
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - dt.timedelta(days=DAYS - 1), today + dt.timedelta(days=1)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120, limits=limits) as http:
        sponsor = await ok(
            http.post("/api/v1/sponsors", json={"sponsor": {"displayName": "Bench"}}, headers=auth)
        )
        sponsor_id = sponsor["sponsor"]["id"]
        paced, items = await campaign(http, auth, sponsor_id, start, end, LINE_ITEMS)
        pairs = [(items[n % LINE_ITEMS], slots[n]) for n in range(LINE_ITEMS * PLACEMENTS_EACH)]
        await measure(
            len(pairs),
            lambda n: http.post(
                f"/api/v1/lineItems/{pairs[n][0]}:book", json=booking(pairs[n][1]), headers=auth
            ),
        )

        # Bookings of distinct slots, each client for its own campaign, over a later
        # flight (the same slots are free then).
        later = end + dt.timedelta(days=1)
        own = [
            (await campaign(http, auth, sponsor_id, later, later + dt.timedelta(days=7), 1))[1][0]
            for _ in range(CLIENTS)
        ]
        booked = await measure(
            len(slots),
            lambda n: http.post(
                f"/api/v1/lineItems/{own[n % CLIENTS]}:book",
                json=booking(slots[n]),
                headers=auth,
            ),
        )
        print(f"campaign_bookings: {len(slots)}")
        print(f"campaign_booking_per_s: {len(slots) / booked[1]:.0f}")
        # The same calls through Envoy into the campaign service, refused by its
        # interceptor before any work: the floor bookings are measured against.
        refused = await measure(
            len(slots),
            lambda n: http.post(
                f"/api/v1/lineItems/{own[n % CLIENTS]}:book", json=booking(slots[n])
            ),
            expect=401,
        )
        print(f"campaign_refused_booking_per_s: {len(slots) / refused[1]:.0f}")
        print(f"campaign_booking_vs_refused_ratio: {refused[1] / booked[1]:.2f}")

        path = f"/api/v1/campaigns/{paced}/pacing"
        answer = await ok(http.get(path, headers=auth))
        delivered = int(answer["pacing"].get("deliveredImpressions", "0"))
        if len(answer["lineItemPacings"]) != LINE_ITEMS or not delivered:
            raise BenchError(f"unexpected pacing: {str(answer)[:500]}")
        print(f"campaign_line_items: {LINE_ITEMS}")
        print(f"campaign_placements: {len(pairs)}")
        print(f"campaign_flight_days: {DAYS}")
        print(f"campaign_delivered_impressions: {delivered}")
        print(
            f"campaign_pacing_response_bytes: {len((await http.get(path, headers=auth)).content)}"
        )
        print(f"clients: {CLIENTS}")
        print(f"requests_per_measurement: {requests}", flush=True)
        pacing_p95 = report(
            "campaign_pacing", *await measure(requests, lambda n: http.get(path, headers=auth))
        )
        # The same path through Envoy and the transcoder into the campaign service,
        # refused by its interceptor before any work: the floor for any campaign call.
        refused_p95 = report(
            "campaign_refused_pacing",
            *await measure(requests, lambda n: http.get(path), expect=401),
        )
        print(f"campaign_pacing_vs_refused_p95_ratio: {pacing_p95 / refused_p95:.2f}")

    # The pacing cache's TTL is read at start: the same service restarted without it.
    await stack.stop_service("campaign")
    await stack.start_service("campaign", env_extra=UNCACHED)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120, limits=limits) as http:
        await ok(http.get(path, headers=auth))
        uncached_p95 = report(
            "campaign_pacing_uncached",
            *await measure(requests, lambda n: http.get(path, headers=auth)),
        )
    print(f"campaign_pacing_uncached_vs_refused_p95_ratio: {uncached_p95 / refused_p95:.2f}")


async def main() -> None:
    total = int(FULL_SIZE * scale())
    requests = max(CLIENTS * 10, round(FULL_REQUESTS * scale()))
    run_dir = ROOT / ".run" / f"bench-campaign-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        await run(stack, total, requests)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BenchError as error:
        print(f"campaign: {error}", file=sys.stderr)
        sys.exit(1)
