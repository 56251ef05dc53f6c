"""The SDK's clients against the running platform: the resending ingestion client
while the analytics service is SIGKILLed (exact counts), page iterators (async and
sync), and a retried read."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from podmesh_sdk import Client, Credentials, IngestTotals, SyncClient, pages, sync_pages
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    batches,
    counted,
    expected_counts,
    expected_tables,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import create_tenant


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel)


async def test_ingest_client_resends_across_a_killed_analytics_service(
    seeded: IngestTenant, owner_conn: asyncpg.Connection, stack: Stack
) -> None:
    records = list(
        listener_traffic(seeded.episodes, 12_000, start_us=now_us() - 3 * HOUR_US, span_us=HOUR_US)
    )
    reached = asyncio.Event()

    def on_ack(totals: IngestTotals, batch: object) -> None:
        if totals.accepted + totals.duplicates >= 3000:
            reached.set()

    async with Client(Credentials(stack.gateway_url, seeded.ingest_key)) as client:
        ingestion = client.ingestion(max_reconnects=300)
        ingestion.on_ack = on_ack
        sending = asyncio.create_task(ingestion.send(batches(records, 500)))
        await reached.wait()
        assert await stack.kill_service("analytics") == -9
        await stack.start_service("analytics")
        totals = await sending

    assert totals.reconnects >= 1
    assert totals.accepted + totals.duplicates == len(records)
    assert totals.rejected == 0
    assert sum(totals.filtered_by_reason.values()) + totals.late + totals.countable == (
        totals.accepted
    )
    expected = expected_counts(
        records, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
    )
    assert await counted(owner_conn, seeded.tenant.id) == expected_tables(expected, len(records))


async def test_page_iterators_walk_every_page(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "pages")
    credentials = Credentials(stack.gateway_url, tenant.owner_key)
    async with Client(credentials) as client:
        for n in range(5):
            await client.catalog.CreatePodcast(
                catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title=f"Show {n}"))
            )
        walked = [
            p.title
            async for p in pages(
                client.catalog.ListPodcasts,
                catalog_pb2.ListPodcastsRequest(page_size=2),
                lambda response: response.podcasts,
            )
        ]
    assert sorted(walked) == [f"Show {n}" for n in range(5)]

    def blocking() -> list[str]:
        with SyncClient(credentials) as sync:
            return [
                p.title
                for p in sync_pages(
                    sync.catalog.ListPodcasts,
                    catalog_pb2.ListPodcastsRequest(page_size=2),
                    lambda response: response.podcasts,
                )
            ]

    assert sorted(await asyncio.to_thread(blocking)) == sorted(walked)
