"""The lift's control group at campaign scale: ListPodcastHouseholds for 5 podcasts
with 500,000 distinct households (1,000,000 counted downloads over 30 days), streamed
to attribution's client and counted against 200,000 exposed households, as
GetCampaignReport does (services.attribution.lift.control.campaign_lift).

Starts its own platform with durable PostgreSQL. Downloads are written as counting
writes them, with COPY as the schema owner. BENCH_SCALE shrinks the households.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

import grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from services.attribution.lift.control import ExposedHouseholds, campaign_lift  # noqa: E402
from services.attribution.peers import Analytics  # noqa: E402
from tests.support import bearer, create_tenant  # noqa: E402

FULL_HOUSEHOLDS = 500_000
PODCASTS = 5
DAYS = 30
RUNS = 5
START = datetime(2026, 3, 1, tzinfo=UTC)
COLUMNS = [
    "tenant_id",
    "episode_id",
    "listener_id",
    "window_start",
    "podcast_id",
    "download_time",
    "household_id",
    "user_agent_lists",
]


async def seed(owner_dsn: str, tenant_id: uuid.UUID, households: list[bytes]) -> list[uuid.UUID]:
    """Each household downloads twice, from two of the podcasts, on random days."""
    podcasts = [uuid.uuid4() for _ in range(PODCASTS)]
    episodes = [uuid.uuid4() for _ in range(PODCASTS)]
    rng = random.Random(11)
    rows = []
    for i, household in enumerate(households):
        for k in range(2):
            p = (i + k) % PODCASTS
            day = START + timedelta(days=rng.randrange(DAYS))
            moment = day + timedelta(seconds=rng.randrange(86_400))
            rows.append(
                (tenant_id, episodes[p], os.urandom(16), day, podcasts[p], moment, household, "b")
            )
    conn = await asyncpg.connect(owner_dsn)
    try:
        await conn.copy_records_to_table("downloads", records=rows, columns=COLUMNS)
        await conn.execute("ANALYZE downloads")
    finally:
        await conn.close()
    return podcasts


async def run(stack: Stack) -> None:
    count = max(1000, round(FULL_HOUSEHOLDS * scale()))
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenant = await create_tenant(
            tenant_pb2_grpc.TenantServiceStub(channel), stack.admin_token, "lift"
        )
    households = [os.urandom(16) for _ in range(count)]
    started = time.perf_counter()
    podcasts = await seed(stack.owner_dsn, uuid.UUID(tenant.id), households)
    print(f"seeded {2 * count} downloads in {time.perf_counter() - started:.1f} s")
    exposed = ExposedHouseholds(frozenset(households[: count * 2 // 5]), frozenset(), frozenset())
    site_visitors = frozenset(households[::20])
    credentials = bearer(tenant.owner_key)
    streamed: list[float] = []
    counted: list[float] = []
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        analytics = Analytics(channel)
        for _ in range(RUNS):
            started = time.perf_counter()
            received = 0
            async for chunk in analytics.podcast_households(
                podcasts, START, START + timedelta(days=DAYS), credentials
            ):
                received += len(chunk)
            streamed.append(time.perf_counter() - started)
            if received != count:
                raise AssertionError(f"{received} households streamed, {count} expected")
            started = time.perf_counter()
            lift = await campaign_lift(
                analytics,
                credentials,
                podcasts,
                START,
                START + timedelta(days=DAYS),
                exposed,
                site_visitors,
                frozenset(),
            )
            counted.append(time.perf_counter() - started)
    print(f"lift: {lift}")
    print(f"attribution_lift_households: {count}")
    print(f"attribution_lift_households_stream_seconds: {statistics.median(streamed):.3f}")
    print(f"attribution_lift_households_per_s: {count / statistics.median(streamed):.0f}")
    print(f"attribution_lift_control_group_seconds: {statistics.median(counted):.3f}")


async def main() -> None:
    run_dir = ROOT / ".run" / f"bench-lift-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        await run(stack)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
