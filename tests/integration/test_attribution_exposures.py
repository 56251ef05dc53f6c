"""Exposures from analytics' counting: listener requests ingested through analytics
that deliver a booked slot's ad become exposures of the placement's line item, with the
episode, household (analytics' keyed hash of the IP), time and country; deliveries
outside the flight or on unbooked slots do not; a rebuild of the counts adds no
duplicate; and the internal ApplyAdDeliveries is idempotent and follows removals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as cpb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.client_ip import IpHasher
from tests.analytics_ingest_support import wait_rebuilt
from tests.attribution_exposures_support import (
    Booked,
    booked_slot,
    drained,
    expected_rows,
    flight_start_yesterday,
    ingest,
    stored_rows,
    whole_downloads,
)
from tests.campaign_support import CampaignStub, CatalogStub, day_floor, ts
from tests.catalog.support import FeedServer
from tests.support import bearer, create_tenant, error_info, violated_fields


@pytest.fixture
async def analytics(
    gateway_channel: grpc.aio.Channel,
) -> analytics_pb2_grpc.AnalyticsServiceAsyncStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)


@pytest.fixture
async def attribution(
    gateway_channel: grpc.aio.Channel,
) -> attribution_pb2_grpc.AttributionServiceAsyncStub:
    return attribution_pb2_grpc.AttributionServiceStub(gateway_channel)


@pytest.fixture
async def booked(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
) -> Booked:
    tenant = await create_tenant(tenants, stack.admin_token, "expo")
    return await booked_slot(catalog, campaigns, feeds, tenant, flight_start_yesterday())


async def test_counted_ads_on_booked_slots_become_exposures_once(
    booked: Booked,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    key = booked.tenant.owner_key
    now = datetime.now(UTC)
    today = day_floor(now)
    yesterday_noon = today - timedelta(hours=12)
    # Before the flight (which starts yesterday at 00:00): counted, but no exposure.
    before_flight = today - timedelta(days=1, hours=6)
    in_flight = [f"203.0.113.{n}" for n in range(1, 6)]
    await ingest(analytics, key, whole_downloads(booked.episode.id, yesterday_noon, in_flight[:3]))
    await ingest(
        analytics,
        key,
        whole_downloads(booked.episode.id, today + (now - today) / 2, in_flight[3:], country="FR"),
    )
    await ingest(
        analytics, key, whole_downloads(booked.episode.id, before_flight, ["198.51.100.20"])
    )
    await drained(owner_conn, booked.tenant.id)

    delivered = await owner_conn.fetchval(
        "SELECT count(*) FROM ad_deliveries WHERE tenant_id = $1", uuid.UUID(booked.tenant.id)
    )
    assert delivered == 6
    expected = await expected_rows(owner_conn, booked)
    assert len(expected) == 5
    stored = await stored_rows(owner_conn, booked.tenant.id)
    assert sorted(stored) == sorted(expected)

    listed = await attribution.ListExposures(
        pb.ListExposuresRequest(line_item_id=booked.line_item.id), metadata=bearer(key)
    )
    hasher = IpHasher(stack.secrets.ip_hash_secret.encode(), booked.tenant.id)
    households = {hasher.household_id(ip).hex(): ip for ip in in_flight}
    assert {e.household_id for e in listed.exposures} == set(households)
    for exposure in listed.exposures:
        assert exposure.line_item_id == booked.line_item.id
        assert exposure.campaign_id == booked.line_item.campaign_id
        assert exposure.placement_id == booked.placement.id
        assert exposure.episode_id == booked.episode.id
        assert exposure.podcast_id == booked.episode.podcast_id
        assert exposure.ad_slot_id == booked.placement.ad_slot_id
        assert exposure.source == pb.EXPOSURE_SOURCE_ANALYTICS
        ip = households[exposure.household_id]
        assert exposure.country_code == ("DE" if ip in in_flight[:3] else "FR")
        assert exposure.id.startswith("dl-")
    times = [e.exposure_time.ToDatetime(tzinfo=UTC) for e in listed.exposures]
    assert times == sorted(times, reverse=True)

    # A rebuild deletes and writes again every delivery of the days: the same exposures.
    started = await analytics.RebuildCounts(
        apb.RebuildCountsRequest(
            count_rebuild=apb.CountRebuild(
                start_time=ts(today - timedelta(days=2)), end_time=ts(now)
            )
        ),
        metadata=bearer(key),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, key, timeout_s=60)
    assert done.state == apb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message
    await drained(owner_conn, booked.tenant.id)
    assert sorted(await stored_rows(owner_conn, booked.tenant.id)) == sorted(expected)
    assert await expected_rows(owner_conn, booked) == expected
    keys = await owner_conn.fetchval(
        "SELECT count(*) FROM attribution_keys WHERE tenant_id = $1 AND kind = 3",
        uuid.UUID(booked.tenant.id),
    )
    assert keys == 5


async def test_unbooked_slots_and_other_episodes_give_no_exposures(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "unbooked")
    booked = await booked_slot(catalog, campaigns, feeds, tenant, flight_start_yesterday())
    await campaigns.DeletePlacement(
        cpb.DeletePlacementRequest(placement_id=booked.placement.id),
        metadata=bearer(tenant.owner_key),
    )
    now = datetime.now(UTC)
    unbooked_before = await unbooked_deliveries(stack)
    await ingest(
        analytics,
        tenant.owner_key,
        whole_downloads(booked.episode.id, now - timedelta(minutes=30), ["203.0.113.77"]),
    )
    await drained(owner_conn, tenant.id)
    # Other tenants' deliveries may be counted meanwhile: at least this one.
    assert await unbooked_deliveries(stack) >= unbooked_before + 1
    assert (
        await owner_conn.fetchval(
            "SELECT count(*) FROM ad_deliveries WHERE tenant_id = $1", uuid.UUID(tenant.id)
        )
        == 1
    )
    assert await stored_rows(owner_conn, tenant.id) == []


async def unbooked_deliveries(stack: Stack) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        exposition = (await client.get(stack.metrics_url("attribution"))).text
    for line in exposition.splitlines():
        if line.startswith("attribution_unbooked_deliveries_total "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def change(
    booked: Booked, household: bytes, when: datetime, *, listener: bytes, removed: bool = False
) -> pb.AdDeliveryChange:
    return pb.AdDeliveryChange(
        episode_id=booked.episode.id,
        listener_id=listener,
        window_start_time=ts(booked.flight_start),
        ad_slot_id=booked.placement.ad_slot_id,
        removed=removed,
        podcast_id=booked.episode.podcast_id,
        delivered_time=ts(when),
        household_id=household,
        country_code="ZZ",
    )


async def test_apply_ad_deliveries_is_idempotent_and_follows_removals(
    booked: Booked,
    stack: Stack,
    owner_conn: asyncpg.Connection,
) -> None:
    """What the relay relies on: a batch sent again changes nothing, and a delivery's
    last change in a batch decides whether its exposure exists, at its latest time."""
    tenant_id = booked.tenant.id
    now = datetime.now(UTC) - timedelta(minutes=5)
    household = bytes(range(16))
    first = change(booked, household, now - timedelta(hours=1), listener=b"a" * 16)
    second = change(booked, household, now - timedelta(hours=2), listener=b"b" * 16)
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        stub = attribution_pb2_grpc.AttributionServiceStub(channel)
        admin = bearer(stack.admin_token)
        request = pb.ApplyAdDeliveriesRequest(tenant_id=tenant_id, changes=[first, second])
        applied = await stub.ApplyAdDeliveries(request, metadata=admin)
        assert (applied.added_count, applied.duplicate_count) == (2, 0)
        again = await stub.ApplyAdDeliveries(request, metadata=admin)
        assert (again.added_count, again.duplicate_count) == (0, 2)
        assert len(await stored_rows(owner_conn, tenant_id)) == 2

        # The first download's delivery moves to an earlier time (same key), the second
        # is taken away, then the whole batch arrives a second time.
        moved = change(booked, household, now - timedelta(hours=3), listener=b"a" * 16)
        gone = change(booked, household, now - timedelta(hours=2), listener=b"b" * 16, removed=True)
        removal = change(
            booked, household, now - timedelta(hours=1), listener=b"a" * 16, removed=True
        )
        batch = pb.ApplyAdDeliveriesRequest(tenant_id=tenant_id, changes=[removal, moved, gone])
        result = await stub.ApplyAdDeliveries(batch, metadata=admin)
        assert (result.added_count, result.removed_count) == (1, 2)
        # Sent again: the moved exposure is written anew, the gone one stays gone.
        result = await stub.ApplyAdDeliveries(batch, metadata=admin)
        assert (result.added_count, result.removed_count) == (1, 1)
        stored = await stored_rows(owner_conn, tenant_id)
        assert [(r[5], r[4]) for r in stored] == [(now - timedelta(hours=3), household.hex())]

        # Not the platform's credential: refused.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ApplyAdDeliveries(request, metadata=bearer(booked.tenant.owner_key))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ApplyAdDeliveries(
                pb.ApplyAdDeliveriesRequest(tenant_id="nope", changes=[pb.AdDeliveryChange()]),
                metadata=admin,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(bad.value) == ["tenant_id", "changes[0]"]
        assert error_info(bad.value).domain == "podmesh.dev"
