"""The upkeep of raw site events: day partitions made ahead, days past the raw-data
retention dropped whole with their idempotency keys, younger days kept."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from pydantic import SecretStr

from devstack.stack import Stack
from services.attribution.peers import Campaigns
from services.attribution.sites.limits import PixelRateLimiter
from services.attribution.sites.service import SiteEvents, SiteSettings
from services.attribution.sites.store import SiteEventStore, partition_name
from services.shared.db import Database
from services.shared.server import create_redis

pytestmark = pytest.mark.stack


async def _add_day(owner: asyncpg.Connection, tenant_id: uuid.UUID, day: dt.date) -> str:
    """One site event and its key on `day`, written as the schema owner."""
    await owner.fetchval("SELECT attribution_ensure_partitions('site_events', $1, $1)", day)
    moment = dt.datetime.combine(day, dt.time(12), dt.UTC)
    event_id = f"upkeep-{uuid.uuid4()}"
    async with owner.transaction():
        await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        await owner.execute(
            "INSERT INTO site_events (tenant_id, event_time, receive_time, sponsor_id, "
            "event_type, household_id, event_id) VALUES ($1, $2, $2, $3, 1, '\\x00', $4)",
            tenant_id,
            moment,
            uuid.uuid4(),
            event_id,
        )
        await owner.execute(
            "INSERT INTO attribution_keys (tenant_id, kind, key, event_time) "
            "VALUES ($1, 1, $2, $3)",
            tenant_id,
            event_id,
            moment,
        )
    return event_id


async def test_upkeep_makes_days_ahead_and_drops_days_past_retention(
    stack: Stack, owner_conn: asyncpg.Connection
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    tenant_id = uuid.uuid4()
    await _add_day(owner_conn, tenant_id, today - dt.timedelta(days=40))
    kept = await _add_day(owner_conn, tenant_id, today - dt.timedelta(days=20))

    db = await Database.connect(stack.app_dsn, min_size=1, max_size=2)
    redis = create_redis(stack.redis_url)
    try:
        async with grpc.aio.insecure_channel(stack.service_addr("campaign")) as channel:
            sites = SiteEvents(
                await SiteEventStore.create(db),
                Campaigns(channel, stack.admin_token),
                PixelRateLimiter(redis, 60),
                SiteSettings(
                    ip_hash_secret=SecretStr(stack.secrets.ip_hash_secret),
                    raw_retention_days=31,
                ),
            )
            dropped = await sites.upkeep()
    finally:
        await db.close()
        await redis.aclose()

    assert partition_name(today - dt.timedelta(days=40)) in dropped
    assert partition_name(today - dt.timedelta(days=20)) not in dropped
    for ahead in range(-1, 4):
        name = partition_name(today + dt.timedelta(days=ahead))
        assert await owner_conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name), name
    keys = await owner_conn.fetch(
        "SELECT key FROM attribution_keys WHERE tenant_id = $1 ORDER BY key", tenant_id
    )
    assert [k["key"] for k in keys] == [kept]
    rows = await owner_conn.fetch(
        "SELECT event_id FROM site_events WHERE tenant_id = $1", tenant_id
    )
    assert [r["event_id"] for r in rows] == [kept]
