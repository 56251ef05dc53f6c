"""The campaign issue's benchmark: GetPacing for a campaign of 50 line items over a
90-day flight on the analytics benchmark's tenant (20 million listener requests over 90
days at BENCH_SCALE=1.0, seeded through the real ingestion path), as JSON through
Envoy under 16 concurrent clients, against the same call refused before any work
(no credentials) measured the same way in the same run, with the pacing cache as
deployed (answers reused for 5 s) and again with the campaign service restarted without
it; and bookings of distinct slots per second by 16 concurrent clients, consecutive
bookings going to different ones of 16 campaigns, against the same calls refused
before any work.

wrk (16 connections, 2 threads, closed loop) sends every measured request: a Python
client spent more CPU per request than the services it measured (about 6 ms against
the 3-4 ms of a refused call), so it, not the platform, set both the floor and the
figure on a small machine. Each booking request books another (slot, flight) pair:
every slot over each of enough one-day line item flights for 1,500 bookings a second.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on).
BENCH_SCALE=1.0 seeds 20,000,000 requests (25-35 minutes here) and measures pacing
for 20 s each; BENCH_SCALE=0.1 seeds 2,000,000 and measures for 5 s (the shortest
measurement whatever the scale). Bookings are measured for 5 s at every scale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import shutil
import string
import sys
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
    lua_script,
    seed,
    settle,
)
from tests.bench.processes import print_cpu, process_cpu  # noqa: E402
from tests.bench.wrk import BenchError, run_wrk  # noqa: E402
from tests.support import bearer, create_tenant  # noqa: E402

CLIENTS = 16
THREADS = 2
LINE_ITEMS = 50
PLACEMENTS_EACH = 4
FULL_SECONDS = 20.0
MIN_SECONDS = 5
WARMUP_SECONDS = 2
BOOKING_SECONDS = 5
# Bookings prepared per second measured: a run that uses them up is refused, not
# reported (wrk would send the same booking twice).
BOOKINGS_PER_S_PREPARED = 1_500
WRK_TIMEOUT = "30s"
UNCACHED = {"PODMESH_PACING_CACHE_TTL_S": "0"}
# The audit relay carries every booking's record to the tenant service: its CPU is the
# booking's too.
PROCESSES = ("campaign", "catalog", "analytics", "tenant", "envoy")

# Per wrk thread: its share of the bookings (every THREADS-th from its first), and the
# count of answers with another status than expected and of threads that ran out
# (refused calls cycle through the bookings instead: they book nothing).
BOOKING_LUA = string.Template(
    """\
-- One booking measurement of tests/bench/campaign.py.
local bookings = {
$bookings
}
$headers
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("first", #threads)
end

function init(args)
    turn = first - $threads
    unexpected = 0
    exhausted = 0
end

function request()
    turn = turn + $threads
    if $cycle and bookings[turn] == nil then
        turn = first
    end
    local booking = bookings[turn]
    if booking == nil then
        exhausted = 1
        wrk.thread:stop()
        return wrk.format("GET", "/ready")
    end
    return wrk.format(nil, booking[1], nil, booking[2])
end

function response(status, headers, body)
    if status ~= $expect then
        unexpected = unexpected + 1
    end
end

function done(summary, latency, requests)
    local unexpected = 0
    local exhausted = 0
    for _, thread in ipairs(threads) do
        unexpected = unexpected + thread:get("unexpected")
        exhausted = exhausted + thread:get("exhausted")
    end
    local errors = summary.errors
    unexpected = unexpected + exhausted
    io.write(string.format(
        "wrk_result p50_us=%.0f p95_us=%.0f p99_us=%.0f max_us=%.0f requests=%d " ..
        "duration_us=%d unexpected=%d connect=%d read=%d write=%d timeout=%d\\n",
        latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
        summary.requests, summary.duration, unexpected,
        errors.connect, errors.read, errors.write, errors.timeout))
end
"""
)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def setup_calls(count: int, call: Callable[[int], Awaitable[httpx.Response]]) -> None:
    """`count` calls by CLIENTS concurrent workers: preparing the measured state."""
    next_call = iter(range(count))

    async def worker() -> None:
        for n in next_call:
            response = await call(n)
            if response.status_code != 200:
                raise BenchError(f"{response.status_code}: {response.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))


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
    flights: Sequence[tuple[dt.datetime, dt.datetime] | None],
) -> tuple[str, list[str]]:
    """An active campaign with an active line item per flight (None: the campaign's)."""
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
    items: list[str] = [""] * len(flights)

    async def line_item(n: int) -> httpx.Response:
        fields: dict[str, Any] = {
            "campaignId": campaign_id,
            "displayName": f"Line {n}",
            "adType": "AD_TYPE_DYNAMIC",
            "pricingModel": "PRICING_MODEL_CPM",
            "rate": {"currencyCode": "USD", "minorUnits": "2500"},
            "impressionGoal": "100000",
            "priority": 1 + n % 10,
        }
        flight = flights[n]
        if flight is not None:
            fields["flightStartTime"] = rfc3339(flight[0])
            fields["flightEndTime"] = rfc3339(flight[1])
        response = await http.post("/api/v1/lineItems", json={"lineItem": fields}, headers=auth)
        if response.status_code == 200:
            items[n] = response.json()["lineItem"]["id"]
        return response

    def activate(path: str, state: str) -> Awaitable[httpx.Response]:
        return http.patch(path, json={"state": state}, params={"updateMask": "state"}, headers=auth)

    await setup_calls(len(flights), line_item)
    await ok(activate(f"/api/v1/campaigns/{campaign_id}", "CAMPAIGN_STATE_ACTIVE"))
    await setup_calls(
        len(items), lambda n: activate(f"/api/v1/lineItems/{items[n]}", "LINE_ITEM_STATE_ACTIVE")
    )
    return campaign_id, items


def booking(slot: tuple[str, str]) -> dict[str, str]:
    return {"episodeId": slot[0], "adSlotId": slot[1], "impressionGoal": "1000"}


def booking_script(
    bookings: Sequence[tuple[str, dict[str, str]]],
    credential: str | None,
    expect: int,
    *,
    cycle: bool = False,
) -> str:
    """`cycle`: send the bookings again from the first once all were sent (for calls
    refused before any work, which book nothing however fast they are answered)."""
    # JSON string literals are Lua ones too for the ASCII of these paths, bodies and keys.
    headers = (
        f'wrk.headers["authorization"] = {json.dumps("Bearer " + credential)}'
        if credential is not None
        else ""
    )
    return BOOKING_LUA.substitute(
        bookings="\n".join(
            f"    {{{json.dumps(f'/api/v1/lineItems/{item}:book')}, "
            f"{json.dumps(json.dumps(body))}}},"
            for item, body in bookings
        ),
        headers=headers,
        threads=THREADS,
        expect=expect,
        cycle="true" if cycle else "false",
    )


async def measure(
    stack: Stack, name: str, script: str, path: str, seconds: int, *, warmup: bool = True
) -> dict[str, int]:
    """One wrk measurement; prints its figures and the CPU each process spent per request."""
    file = stack.run_dir / f"{name}.lua"
    file.write_text(script)
    url = stack.gateway_url + path

    async def wrk(duration: int) -> dict[str, int]:
        return await run_wrk(
            file,
            url,
            duration,
            threads=THREADS,
            connections=CLIENTS,
            request_timeout=WRK_TIMEOUT,
        )

    if warmup:
        await wrk(WARMUP_SECONDS)
    before = process_cpu(stack, PROCESSES)
    result = await wrk(seconds)
    after = process_cpu(stack, PROCESSES)
    requests = result["requests"]
    print(f"{name}_p50_ms: {result['p50_us'] / 1000:.2f}")
    print(f"{name}_p95_ms: {result['p95_us'] / 1000:.2f}")
    print(f"{name}_requests: {requests}")
    print(f"{name}_per_s: {requests / (result['duration_us'] / 1_000_000):.0f}")
    print_cpu(name, before, after, requests, per="request", unit="ms")
    return result


def per_s(result: dict[str, int]) -> float:
    return result["requests"] / (result["duration_us"] / 1_000_000)


async def run(stack: Stack, total: int, seconds: int) -> None:
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
        paced, items = await campaign(http, auth, sponsor_id, start, end, [None] * LINE_ITEMS)
        pairs = [(items[n % LINE_ITEMS], slots[n]) for n in range(LINE_ITEMS * PLACEMENTS_EACH)]
        await setup_calls(
            len(pairs),
            lambda n: http.post(
                f"/api/v1/lineItems/{pairs[n][0]}:book", json=booking(pairs[n][1]), headers=auth
            ),
        )

        # Bookings of distinct slots into 16 campaigns, each with a line item for each of
        # enough one-day flights after the pacing campaign's (the same slots are free then).
        flights = math.ceil(BOOKINGS_PER_S_PREPARED * BOOKING_SECONDS / len(slots))
        later = end + dt.timedelta(days=1)
        days = [
            (later + dt.timedelta(days=f), later + dt.timedelta(days=f + 1)) for f in range(flights)
        ]
        own = [
            (
                await campaign(
                    http, auth, sponsor_id, later, later + dt.timedelta(days=flights), days
                )
            )[1]
            for _ in range(CLIENTS)
        ]
    # Autovacuum of the seeded requests would otherwise run beside the measurements.
    await settle(stack)
    # Consecutive bookings go to different campaigns, as 16 independent clients' would.
    bookings = [
        (own[n % CLIENTS][f], booking(slot)) for f in range(flights) for n, slot in enumerate(slots)
    ]
    print(f"campaign_bookings_prepared: {len(bookings)}")
    first = bookings[0][0]
    booked = await measure(
        stack,
        "campaign_booking",
        booking_script(bookings, tenant.owner_key, 200),
        f"/api/v1/lineItems/{first}:book",
        BOOKING_SECONDS,
        warmup=False,
    )
    # The same calls through Envoy into the campaign service, refused by its
    # interceptor before any work: the floor bookings are measured against.
    refused = await measure(
        stack,
        "campaign_refused_booking",
        booking_script(bookings, None, 401, cycle=True),
        f"/api/v1/lineItems/{first}:book",
        BOOKING_SECONDS,
    )
    print(f"campaign_booking_vs_refused_ratio: {per_s(booked) / per_s(refused):.2f}")

    path = f"/api/v1/campaigns/{paced}/pacing"
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
        answer = await ok(http.get(path, headers=auth))
        response_bytes = len((await http.get(path, headers=auth)).content)
    delivered = int(answer["pacing"].get("deliveredImpressions", "0"))
    if len(answer["lineItemPacings"]) != LINE_ITEMS or not delivered:
        raise BenchError(f"unexpected pacing: {str(answer)[:500]}")
    print(f"campaign_line_items: {LINE_ITEMS}")
    print(f"campaign_placements: {len(pairs)}")
    print(f"campaign_flight_days: {DAYS}")
    print(f"campaign_delivered_impressions: {delivered}")
    print(f"campaign_pacing_response_bytes: {response_bytes}")
    print(f"clients: {CLIENTS}")
    print(f"seconds_per_measurement: {seconds}", flush=True)
    pacing = await measure(
        stack, "campaign_pacing", lua_script([path], tenant.owner_key, 200), path, seconds
    )
    # The same path through Envoy and the transcoder into the campaign service,
    # refused by its interceptor before any work: the floor for any campaign call.
    refused_pacing = await measure(
        stack, "campaign_refused_pacing", lua_script([path], None, 401), path, seconds
    )
    refused_p95 = refused_pacing["p95_us"]
    print(f"campaign_pacing_vs_refused_p95_ratio: {pacing['p95_us'] / refused_p95:.2f}")

    # The pacing cache's TTL is read at start: the same service restarted without it.
    await stack.stop_service("campaign")
    await stack.start_service("campaign", env_extra=UNCACHED)
    uncached = await measure(
        stack,
        "campaign_pacing_uncached",
        lua_script([path], tenant.owner_key, 200),
        path,
        seconds,
    )
    print(f"campaign_pacing_uncached_vs_refused_p95_ratio: {uncached['p95_us'] / refused_p95:.2f}")


async def main() -> None:
    total = int(FULL_SIZE * scale())
    seconds = max(MIN_SECONDS, round(FULL_SECONDS * scale()))
    run_dir = ROOT / ".run" / f"bench-campaign-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        await run(stack, total, seconds)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BenchError as error:
        print(f"campaign: {error}", file=sys.stderr)
        sys.exit(1)
