"""The attribution issue's report benchmark: CompareModels (all seven models, broken down
by line item) for a campaign with 1,000,000 exposures over 200,000 households and
100,000 site events of its sponsor, asked of the attribution service directly, cold
(nothing cached) and warm (the same question again, answered from the report cache
after one version check), with the attribution service's resident memory during the
cold report.

The data: 5 line items on 20 podcasts, a 30-day flight that ended 30 days ago (so the
whole 30-day conversion window has passed), each household exposed 5 times; site
events from 300,000 households (a third never exposed): 70% page views, 20% leads, 10%
purchases (a tenth of them with a line item's promo code). Seeded with COPY straight
into the day partitions, as ingestion does. Starts its own platform with durable
PostgreSQL. BENCH_SCALE shrinks the exposures, households and site events alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale
from tests.bench.processes import cpu_seconds, postgres_cpu_seconds

ensure_generated()
sys.path.insert(0, str(GEN_DIR))

import grpc  # noqa: E402
from podmesh.attribution.v1 import attribution_pb2, attribution_pb2_grpc  # noqa: E402
from podmesh.campaign.v1 import campaign_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.attribution_report_support import (  # noqa: E402
    EXPOSURE_COLUMNS,
    SITE_EVENT_COLUMNS,
    ensure_partitions,
)
from tests.campaign_support import (  # noqa: E402
    create_campaign,
    create_line_item,
    create_sponsor,
    day_floor,
)
from tests.support import bearer, create_tenant  # noqa: E402

FULL_EXPOSURES = 1_000_000
FULL_HOUSEHOLDS = 200_000
FULL_SITE_EVENTS = 100_000
LINE_ITEMS = 5
PODCASTS = 20
WARM_CALLS = 30
FLIGHT_DAYS = 30
PROMO_CODES = [f"PODMESH{n}" for n in range(LINE_ITEMS)]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_kib(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def household(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def seed(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    sponsor_id: uuid.UUID,
    line_items: list[uuid.UUID],
    start: dt.datetime,
) -> tuple[int, int]:
    rng = random.Random(11)
    exposures = max(1_000, int(FULL_EXPOSURES * scale()))
    households = max(200, int(FULL_HOUSEHOLDS * scale()))
    site_events = max(100, int(FULL_SITE_EVENTS * scale()))
    podcasts = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(PODCASTS)]
    flight_s = FLIGHT_DAYS * 86_400
    await ensure_partitions(conn, start, start + dt.timedelta(days=2 * FLIGHT_DAYS + 1))
    by_day: dict[str, list[tuple[object, ...]]] = {}
    for n in range(exposures):
        at = start + dt.timedelta(seconds=rng.random() * flight_s)
        by_day.setdefault(f"exposures_{at:%Y%m%d}", []).append(
            (
                tenant_id,
                at,
                at,
                campaign_id,
                rng.choice(line_items),
                rng.choice(podcasts),
                1,
                household(n % households),
                f"x{n:08d}",
            )
        )
    events_by_day: dict[str, list[tuple[object, ...]]] = {}
    for n in range(site_events):
        at = start + dt.timedelta(seconds=rng.random() * 2 * flight_s)
        roll = rng.random()
        kind = 1 if roll < 0.7 else 2 if roll < 0.9 else 3
        purchase = kind == 3
        events_by_day.setdefault(f"site_events_{at:%Y%m%d}", []).append(
            (
                tenant_id,
                at,
                at,
                sponsor_id,
                kind,
                rng.randrange(1_000, 20_000) if purchase else 0,
                household(rng.randrange(households * 3 // 2)),
                f"s{n:08d}",
                "USD",
                f"o{n}" if purchase else "",
                rng.choice(PROMO_CODES) if purchase and rng.random() < 0.1 else "",
            )
        )
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        for table, records in by_day.items():
            await conn.copy_records_to_table(table, records=records, columns=EXPOSURE_COLUMNS)
        for table, records in events_by_day.items():
            await conn.copy_records_to_table(table, records=records, columns=SITE_EVENT_COLUMNS)
        await conn.execute(
            "INSERT INTO attribution_versions (tenant_id, version) VALUES ($1, 1)", tenant_id
        )
    # What autovacuum would do to freshly copied partitions (visibility, hint bits,
    # statistics) is done now, so it neither runs beside the cold report nor is paid by it:
    # a campaign's rows are seldom minutes old when its report is asked for.
    await conn.execute("VACUUM (ANALYZE) exposures, site_events")
    await conn.execute("CHECKPOINT")
    return exposures, site_events


async def run(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenant = await create_tenant(
            tenant_pb2_grpc.TenantServiceStub(channel), stack.admin_token, "bench-attr"
        )
    key = tenant.owner_key
    start = day_floor(dt.datetime.now(dt.UTC)) - dt.timedelta(days=2 * FLIGHT_DAYS)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
        campaigns = campaign_pb2_grpc.CampaignServiceStub(gateway)
        sponsor = await create_sponsor(campaigns, key)
        campaign = await create_campaign(
            campaigns, key, sponsor.id, start=start, end=start + dt.timedelta(days=FLIGHT_DAYS)
        )
        line_items = [
            uuid.UUID(
                (
                    await create_line_item(
                        campaigns,
                        key,
                        campaign.id,
                        display_name=f"Line {n}",
                        promo_code=PROMO_CODES[n],
                    )
                ).id
            )
            for n in range(LINE_ITEMS)
        ]
        conn = await asyncpg.connect(stack.owner_dsn)
        try:
            began = time.perf_counter()
            exposures, events = await seed(
                conn,
                uuid.UUID(tenant.id),
                uuid.UUID(campaign.id),
                uuid.UUID(sponsor.id),
                line_items,
                start,
            )
            print(
                f"seeded {exposures:,} exposures and {events:,} site events "
                f"in {time.perf_counter() - began:.1f}s",
                flush=True,
            )
        finally:
            await conn.close()

    # Straight to the service: a cold report of this size on a loaded machine can
    # outlast the gateway's 30-second limit for unary calls, which would measure Envoy.
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        attribution = attribution_pb2_grpc.AttributionServiceStub(channel)
        request = attribution_pb2.CompareModelsRequest(
            campaign_id=campaign.id, breakdown=attribution_pb2.REPORT_BREAKDOWN_LINE_ITEM
        )
        process = stack.process("attribution")
        assert process is not None
        samples: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(process.pid, samples, stop))
        service_before, db_before = cpu_seconds(process.pid), postgres_cpu_seconds(stack)
        began = time.perf_counter()
        cold = await attribution.CompareModels(request, metadata=bearer(key), timeout=600)
        cold_s = time.perf_counter() - began
        service_cpu = cpu_seconds(process.pid) - service_before
        db_cpu = postgres_cpu_seconds(stack) - db_before
        stop.set()
        await sampler
        warm: list[float] = []
        for _ in range(WARM_CALLS):
            began = time.perf_counter()
            again = await attribution.CompareModels(request, metadata=bearer(key), timeout=30)
            warm.append(time.perf_counter() - began)
        if again != cold:
            raise RuntimeError("the warm report differs from the cold one")
    totals = cold.campaign_reports[0].totals
    print(
        f"campaign: {totals.impressions:,} impressions, {totals.households_reached:,} "
        f"households, {totals.visitors:,.0f} visitors, {totals.leads:,.0f} leads, "
        f"{totals.purchases:,.0f} purchases; {len(cold.campaign_reports)} models"
    )
    print(f"attribution_report_seconds_cold: {cold_s:.2f}")
    # CPU the cold report cost the attribution service and PostgreSQL together: what
    # bounds it on an idle machine, whatever else shares the cores during the run.
    print(f"attribution_report_cold_cpu_seconds: {service_cpu + db_cpu:.2f}")
    print(f"attribution_report_cold_service_cpu_seconds: {service_cpu:.2f}")
    print(f"attribution_report_cold_postgres_cpu_seconds: {db_cpu:.2f}")
    print(f"attribution_report_seconds_warm: {statistics.median(warm):.4f}")
    print(f"attribution_report_warm_p95_ms: {sorted(warm)[int(len(warm) * 0.95) - 1] * 1000:.1f}")
    print(f"attribution_report_rss_mb: {max(samples) / 1024:.0f}")


async def main() -> None:
    run_dir = ROOT / ".run" / f"bench-attribution-report-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        await run(stack)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
