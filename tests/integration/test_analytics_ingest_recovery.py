"""No loss, no double count: the analytics server killed mid-stream, PostgreSQL
restarted mid-stream, Redis down. The client resends what was not acknowledged and
the final counts equal the counting oracle's exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ResendingClient,
    Totals,
    batches,
    counted,
    expected_counts,
    expected_tables,
    ingest_tenant,
    listener_traffic,
    now_us,
)


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel)


def acknowledged(records: int) -> tuple[asyncio.Event, Callable[[Totals], None]]:
    """An event set once `records` records are acknowledged, and the client hook for it."""
    reached = asyncio.Event()

    def on_ack(totals: Totals) -> None:
        if totals.accepted + totals.duplicates >= records:
            reached.set()

    return reached, on_ack


async def assert_counted_exactly(
    seeded: IngestTenant,
    records: list[pb.ListenerRequest],
    totals: Totals,
    conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    assert totals.accepted + totals.duplicates == len(records)
    assert totals.rejected == 0
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert await counted(conn, seeded.tenant.id) == expected_tables(expected, len(records))


async def test_analytics_killed_mid_stream(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 20_000, start_us=now_us() - 3 * HOUR_US, span_us=HOUR_US)
    )
    reached, on_ack = acknowledged(4000)
    client = ResendingClient(gateway_channel, seeded.ingest_key, max_reconnects=300, on_ack=on_ack)
    sending = asyncio.create_task(client.send(batches(records, 500)))
    await reached.wait()

    assert await stack.kill_service("analytics") == -9
    await stack.start_service("analytics")
    totals = await sending

    assert totals.reconnects >= 1
    await assert_counted_exactly(seeded, records, totals, owner_conn, stack)


async def test_postgres_restarted_mid_stream(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    stack: Stack,
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 20_000, start_us=now_us() - 3 * HOUR_US, span_us=HOUR_US)
    )
    reached, on_ack = acknowledged(4000)
    client = ResendingClient(gateway_channel, seeded.ingest_key, max_reconnects=300, on_ack=on_ack)
    sending = asyncio.create_task(client.send(batches(records, 500)))
    await reached.wait()

    await stack.postgres.restart()
    totals = await sending

    assert totals.reconnects >= 1
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        await assert_counted_exactly(seeded, records, totals, conn, stack)
    finally:
        await conn.close()


async def test_ingestion_without_redis(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 3000, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    client = ResendingClient(gateway_channel, seeded.ingest_key)
    await stack.redis.stop()
    try:
        down = await client.send(batches(records[:2000], 250))
    finally:
        await stack.redis.start()
    back = await client.send(batches(records[2000:], 250))

    assert (down.reconnects, back.reconnects) == (0, 0)
    totals = Totals(accepted=down.accepted + back.accepted)
    await assert_counted_exactly(seeded, records, totals, owner_conn, stack)
