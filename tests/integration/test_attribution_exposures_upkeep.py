"""Exposure upkeep against the real database: day partitions made ahead, and days past
the raw retention dropped whole with their idempotency keys, recent ones kept; run by
one replica at a time (the lease)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import redis.asyncio as aioredis
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.attribution.exposures.bookings import SlotBookings
from services.attribution.exposures.operations import Exposures, ExposureSettings
from services.attribution.exposures.repository import ExposureStore
from services.attribution.peers import Campaigns
from services.shared.db import Database
from services.shared.leases import PeriodicLease
from services.shared.pagination import PageTokens
from tests.support import create_tenant

# Far back, so no other test's exposures are that old.
RETENTION_DAYS = 400


async def test_upkeep_makes_days_ahead_and_drops_days_past_retention(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "expoupkeep")
    tenant_id = uuid.UUID(tenant.id)
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=RETENTION_DAYS + 5)
    kept_day = today - timedelta(days=RETENTION_DAYS - 2)
    await owner_conn.fetchval("SELECT attribution_ensure_partitions('exposures', $1, $1)", old_day)
    await owner_conn.fetchval("SELECT attribution_ensure_partitions('exposures', $1, $1)", kept_day)
    for day, exposure_id in ((old_day, "old"), (kept_day, "kept")):
        moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        await owner_conn.execute(
            """
            INSERT INTO exposures (tenant_id, exposure_time, receive_time, campaign_id,
                line_item_id, source, household_id, exposure_id)
            VALUES ($1, $2, $2, $3, $3, 2, '\\x00', $4)
            """,
            tenant_id,
            moment,
            uuid.uuid4(),
            exposure_id,
        )
        await owner_conn.execute(
            "INSERT INTO attribution_keys (tenant_id, kind, key, event_time) "
            "VALUES ($1, 3, $2, $3)",
            tenant_id,
            f"2/{exposure_id}",
            moment,
        )

    db = await Database.connect(stack.app_dsn, min_size=1, max_size=2)
    redis = aioredis.from_url(stack.redis_url)
    channel = grpc.aio.insecure_channel(stack.service_addr("campaign"))
    try:
        campaigns = Campaigns(channel, stack.admin_token)
        exposures = Exposures(
            db,
            ExposureStore(db, RETENTION_DAYS),
            campaigns,
            SlotBookings(campaigns, 30.0),
            PageTokens(b"test"),
            ExposureSettings(
                retention_days=RETENTION_DAYS, ip_hash_secret=b"x" * 32, maintenance_interval_s=60
            ),
        )
        lease = PeriodicLease(db, redis, "attribution-test", f"upkeep-{uuid.uuid4().hex}", 60.0)
        assert await lease.run(exposures.upkeep)
        # The same interval's lease is taken: a second replica does nothing.
        assert not await lease.run(exposures.upkeep)
    finally:
        await channel.close(None)
        await redis.aclose()
        await db.close()

    partitions = {
        r["relname"]
        for r in await owner_conn.fetch(
            """
            SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'exposures'::regclass
            """
        )
    }
    ahead = {f"exposures_{today + timedelta(days=n):%Y%m%d}" for n in range(-1, 4)}
    assert ahead <= partitions
    assert f"exposures_{kept_day:%Y%m%d}" in partitions
    assert not any(
        name < f"exposures_{today - timedelta(days=RETENTION_DAYS):%Y%m%d}" for name in partitions
    )
    left = await owner_conn.fetch(
        "SELECT exposure_id FROM exposures WHERE tenant_id = $1", tenant_id
    )
    assert [r["exposure_id"] for r in left] == ["kept"]
    keys = await owner_conn.fetch(
        "SELECT key FROM attribution_keys WHERE tenant_id = $1 AND kind = 3", tenant_id
    )
    assert [r["key"] for r in keys] == ["2/kept"]
