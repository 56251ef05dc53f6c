"""Catalog's and analytics' changes land in the tenant's audit trail (ListAuditEvents)
with actor, method, resource and request id, through each service's outbox (written in
the change's transaction) and the shared relay; refused or previewed changes leave no
record; relays run at once, or again after a lost acknowledgement, append each record
once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.audit_outbox import AuditRelay, Outbox
from services.shared.db import Database
from tests.campaign_support import CatalogStub, create_inventory
from tests.catalog.support import fixture
from tests.support import TenantHandle, bearer, create_tenant

Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
CATALOG = "podmesh.catalog.v1.CatalogService/"
ANALYTICS = "podmesh.analytics.v1.AnalyticsService/"


def traced(key: str, request_id: str) -> tuple[tuple[str, str], ...]:
    return (*bearer(key), ("x-request-id", request_id))


async def audited(tenants: Tenants, key: str) -> list[tenant_pb2.AuditEvent]:
    events: list[tenant_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await tenants.ListAuditEvents(
            tenant_pb2.ListAuditEventsRequest(page_size=200, page_token=token), metadata=bearer(key)
        )
        events += page.audit_events
        token = page.next_page_token
        if not token:
            return events


async def audited_by_request(
    tenants: Tenants, key: str, request_ids: set[str]
) -> dict[str, tenant_pb2.AuditEvent]:
    """The tenant's events by request id, once every one asked for has been relayed."""
    found: dict[str, tenant_pb2.AuditEvent] = {}
    for _ in range(100):
        found = {e.request_id: e for e in await audited(tenants, key)}
        if request_ids <= found.keys():
            break
        await asyncio.sleep(0.1)
    return found


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=1, max_size=4)
    try:
        yield database
    finally:
        await database.close()


async def test_catalog_changes_are_audited(
    catalog: CatalogStub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "kaudit")
    key = tenant.owner_key
    podcast = (
        await catalog.CreatePodcast(
            kpb.CreatePodcastRequest(podcast=kpb.Podcast(title="Audited")),
            metadata=traced(key, "k-create-podcast"),
        )
    ).podcast
    await catalog.UpdatePodcast(
        kpb.UpdatePodcastRequest(
            podcast=kpb.Podcast(id=podcast.id, author="Ana"),
            update_mask=FieldMask(paths=["author"]),
        ),
        metadata=traced(key, "k-update-podcast"),
    )
    episode = (
        await catalog.CreateEpisode(
            kpb.CreateEpisodeRequest(
                podcast_id=podcast.id,
                episode=kpb.Episode(
                    title="One", media_url=f"https://cdn.example.com/{uuid.uuid4().hex}.mp3"
                ),
            ),
            metadata=traced(key, "k-create-episode"),
        )
    ).episode
    await catalog.UpdateEpisode(
        kpb.UpdateEpisodeRequest(
            episode=kpb.Episode(id=episode.id, title="One, again"),
            update_mask=FieldMask(paths=["title"]),
        ),
        metadata=traced(key, "k-update-episode"),
    )
    await catalog.DeleteEpisode(
        kpb.DeleteEpisodeRequest(episode_id=episode.id), metadata=traced(key, "k-delete-episode")
    )
    await catalog.DeletePodcast(
        kpb.DeletePodcastRequest(podcast_id=podcast.id), metadata=traced(key, "k-delete-podcast")
    )
    body = (
        fixture("apple.xml")
        .replace(b"pfh-", b"audit-")
        .replace(b"personalfinancehour.example.com/rss", f"{tenant.slug}.example/rss".encode())
    )
    preview = await catalog.ImportFeed(
        kpb.ImportFeedRequest(feed_body=body, validate_only=True),
        metadata=traced(key, "k-preview"),
    )
    assert preview.podcast_created
    imported = await catalog.ImportFeed(
        kpb.ImportFeedRequest(feed_body=body), metadata=traced(key, "k-import")
    )
    kept = await create_inventory(catalog, key)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await catalog.DeletePodcast(
            kpb.DeletePodcastRequest(podcast_id=kept.podcast_id),
            metadata=traced(key, "k-refused"),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    expected = {
        "k-create-podcast": ("CreatePodcast", "podcast", podcast.id),
        "k-update-podcast": ("UpdatePodcast", "podcast", podcast.id),
        "k-create-episode": ("CreateEpisode", "episode", episode.id),
        "k-update-episode": ("UpdateEpisode", "episode", episode.id),
        "k-delete-episode": ("DeleteEpisode", "episode", episode.id),
        "k-delete-podcast": ("DeletePodcast", "podcast", podcast.id),
        "k-import": ("ImportFeed", "podcast", imported.podcast.id),
    }
    found = await audited_by_request(tenants, key, set(expected))
    got = {
        request_id: (event.method.removeprefix(CATALOG), event.resource_type, event.resource_id)
        for request_id, event in found.items()
        if request_id in expected
    }
    assert got == expected
    actors = {(found[r].actor_type, found[r].actor_id) for r in expected}
    assert len(actors) == 1
    assert next(iter(actors))[0] == "api_key"
    assert found["k-update-podcast"].details["update_mask"] == '["author"]'
    assert found["k-import"].details["episodes_created"] == str(imported.created_episode_count)
    # A preview changes nothing and a refused change is not made: neither is recorded.
    assert "k-preview" not in found
    assert "k-refused" not in found


async def test_analytics_rebuild_and_settings_are_audited(
    gateway_channel: grpc.aio.Channel, tenants: Tenants, stack: Stack
) -> None:
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    tenant = await create_tenant(tenants, stack.admin_token, "aaudit")
    key = tenant.owner_key
    await analytics.UpdateCountingSettings(
        apb.UpdateCountingSettingsRequest(
            counting_settings=apb.CountingSettings(excluded_ip_ranges=["203.0.113.0/24"]),
            update_mask=FieldMask(paths=["excluded_ip_ranges"]),
        ),
        metadata=traced(key, "a-settings"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await analytics.UpdateCountingSettings(
            apb.UpdateCountingSettingsRequest(
                counting_settings=apb.CountingSettings(excluded_ip_ranges=["not a range"]),
                update_mask=FieldMask(paths=["excluded_ip_ranges"]),
            ),
            metadata=traced(key, "a-refused"),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    now = datetime.now(UTC)
    started = await analytics.RebuildCounts(
        apb.RebuildCountsRequest(
            count_rebuild=apb.CountRebuild(
                start_time=Timestamp(seconds=int((now - timedelta(hours=2)).timestamp())),
                end_time=Timestamp(seconds=int(now.timestamp())),
            )
        ),
        metadata=traced(key, "a-rebuild"),
    )

    found = await audited_by_request(tenants, key, {"a-settings", "a-rebuild"})
    settings, rebuild = found["a-settings"], found["a-rebuild"]
    assert (settings.method, settings.resource_type, settings.resource_id) == (
        ANALYTICS + "UpdateCountingSettings",
        "counting_settings",
        tenant.id,
    )
    assert settings.details["excluded_ip_ranges"] == '["203.0.113.0/24"]'
    assert (rebuild.method, rebuild.resource_type, rebuild.resource_id) == (
        ANALYTICS + "RebuildCounts",
        "count_rebuild",
        started.count_rebuild.id,
    )
    assert settings.actor_type == rebuild.actor_type == "api_key"
    assert settings.actor_id == rebuild.actor_id != ""
    assert "a-refused" not in found
    # The rebuild's own progress (its state changes) is not a caller's change.
    events = await audited(tenants, key)
    assert [e.method for e in events if e.method.startswith(ANALYTICS)].count(
        ANALYTICS + "RebuildCounts"
    ) == 1


async def test_relays_append_each_record_once(
    tenants: Tenants,
    tenant_channel: grpc.aio.Channel,
    stack: Stack,
    db: Database,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "relay")
    # A service with no relay running, so only the relays of this test send its records.
    await owner_conn.execute(
        """
        CREATE TABLE relaytest_audit_outbox (LIKE catalog_audit_outbox INCLUDING ALL);
        ALTER TABLE relaytest_audit_outbox ENABLE ROW LEVEL SECURITY;
        ALTER TABLE relaytest_audit_outbox FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON relaytest_audit_outbox
            USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
        CREATE POLICY owner_lookup ON relaytest_audit_outbox FOR SELECT TO CURRENT_USER
            USING (true);
        GRANT SELECT, INSERT, UPDATE ON relaytest_audit_outbox TO podmesh_app;
        CREATE FUNCTION relaytest_outbox_tenants()
            RETURNS TABLE (tenant_id uuid) LANGUAGE sql SECURITY DEFINER AS
            $$ SELECT DISTINCT tenant_id FROM relaytest_audit_outbox WHERE relayed_at IS NULL $$;
        """
    )
    try:
        await relay_twice(tenants, tenant_channel, stack, db, owner_conn, tenant)
    finally:
        await owner_conn.execute(
            "DROP FUNCTION relaytest_outbox_tenants(); DROP TABLE relaytest_audit_outbox"
        )


async def relay_twice(
    tenants: Tenants,
    tenant_channel: grpc.aio.Channel,
    stack: Stack,
    db: Database,
    owner_conn: asyncpg.Connection,
    tenant: TenantHandle,
) -> None:
    tenant_id = uuid.UUID(tenant.id)
    ids = [uuid.uuid4() for _ in range(1200)]
    await owner_conn.executemany(
        """
        INSERT INTO relaytest_audit_outbox (tenant_id, event_id, actor_type, method,
            resource_type, resource_id)
        VALUES ($1, $2, 'service', 'test/Relay', 'thing', $3)
        """,
        [(tenant_id, i, str(n)) for n, i in enumerate(ids)],
    )
    outbox = Outbox("relaytest")
    relays = [AuditRelay(db, outbox, tenant_channel, stack.admin_token, 1.0) for _ in range(2)]
    sent = await asyncio.gather(*(relay.relay() for relay in relays))
    assert sum(sent) == len(ids)
    # As if the acknowledgement of a whole batch had been lost: sent again, kept once.
    await owner_conn.execute(
        "UPDATE relaytest_audit_outbox SET relayed_at = NULL WHERE event_id = ANY($1::uuid[])",
        ids[:300],
    )
    assert await relays[0].relay() == 300
    assert await relays[1].relay() == 0
    relayed = [e.id for e in await audited(tenants, tenant.owner_key) if e.method == "test/Relay"]
    assert sorted(relayed) == sorted(str(i) for i in ids)
