"""Exactly once across crashes: attribution SIGKILLed while exposures flow (and while
analytics' outbox holds a backlog for it), then analytics SIGKILLed while it counts and
relays; after both restart, the exposures table holds exactly analytics' ad deliveries
on the booked slot, none lost and none twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.attribution_exposures_support import (
    booked_slot,
    drained,
    expected_rows,
    flight_start_yesterday,
    ingest,
    stored_rows,
    whole_downloads,
)
from tests.campaign_support import CampaignStub, CatalogStub
from tests.catalog.support import FeedServer
from tests.support import create_tenant

BACKLOG = 40
BATCHES = 8
PER_BATCH = 20


async def outbox_pending(conn: asyncpg.Connection, tenant_id: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM analytics_exposure_outbox WHERE tenant_id = $1",
        uuid.UUID(tenant_id),
    )
    return count


async def until_exposures(conn: asyncpg.Connection, tenant_id: str, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM exposures WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
        if count:
            return count
        await asyncio.sleep(0.05)
    raise AssertionError("no exposure arrived")


async def test_sigkill_of_either_service_loses_and_duplicates_nothing(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "expokill")
    booked = await booked_slot(catalog, campaigns, feeds, tenant, flight_start_yesterday())
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    key = tenant.owner_key
    start = datetime.now(UTC) - timedelta(minutes=30)
    ips = [f"203.0.113.{n}" for n in range(1, BACKLOG + BATCHES * PER_BATCH + 1)]

    # Attribution down: counted deliveries wait in analytics' outbox.
    assert await stack.kill_service("attribution") == -9
    await ingest(analytics, key, whole_downloads(booked.episode.id, start, ips[:BACKLOG]))
    assert await outbox_pending(owner_conn, tenant.id) == BACKLOG

    async def traffic() -> None:
        for n in range(BATCHES):
            first = BACKLOG + n * PER_BATCH
            when = start + timedelta(seconds=first)
            await ingest(
                analytics,
                key,
                whole_downloads(booked.episode.id, when, ips[first : first + PER_BATCH]),
            )

    sending = asyncio.create_task(traffic())
    try:
        # Attribution back, and killed again as soon as the backlog starts to land.
        await stack.start_service("attribution")
        await until_exposures(owner_conn, tenant.id)
        assert await stack.kill_service("attribution") == -9
        await stack.start_service("attribution")

        # Analytics killed while it counts and relays.
        await asyncio.sleep(0.3)
        assert await stack.kill_service("analytics") == -9
        await stack.start_service("analytics")
    finally:
        await sending

    await drained(owner_conn, tenant.id)
    expected = await expected_rows(owner_conn, booked)
    assert len(expected) == len(ips)
    stored = await stored_rows(owner_conn, tenant.id)
    assert len(stored) == len(ips)
    assert sorted(stored) == sorted(expected)
