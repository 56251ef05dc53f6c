"""Makegoods: a line item whose flight ended under goal shows GOAL_MISSED with its
shortfall; a placement booked as its makegood delivers towards it, and pacing shows
both the original's shortfall shrinking and the makegood line item's own delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_line_item,
    create_sponsor,
    imported_episode,
    listener_requests,
    ts,
)
from tests.catalog.support import FeedServer
from tests.support import bearer, create_tenant, error_info


async def test_missed_goal_and_its_makegood(
    campaigns: CampaignStub,
    catalog: CatalogStub,
    feeds: FeedServer,
    gateway_channel: grpc.aio.Channel,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "mg")
    key = tenant.owner_key
    episode = await imported_episode(catalog, feeds, tenant)
    now = datetime.now(UTC)
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(
        campaigns, key, sponsor.id, start=now - timedelta(days=20), end=now + timedelta(days=10)
    )
    missed = await create_line_item(
        campaigns,
        key,
        campaign.id,
        impression_goal=500,
        flight_start_time=ts(now - timedelta(days=20)),
        flight_end_time=ts(now - timedelta(days=10)),
    )
    makegood = await create_line_item(
        campaigns,
        key,
        campaign.id,
        display_name="Makegood",
        impression_goal=0,
        flight_start_time=ts(now - timedelta(hours=1)),
        flight_end_time=ts(now + timedelta(days=5)),
    )
    before = (
        await campaigns.GetPacing(pb.GetPacingRequest(line_item_id=missed.id), metadata=bearer(key))
    ).pacing
    assert before.status == pb.PACING_STATUS_GOAL_MISSED
    assert before.shortfall_impressions == 500
    assert before.flight_elapsed_fraction == 1.0

    # A makegood is for a line item whose flight has ended.
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await campaigns.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=missed.id,
                episode_id=episode.id,
                ad_slot_id=episode.ad_slots[0].id,
                makegood_for_line_item_id=makegood.id,
            ),
            metadata=bearer(key),
        )
    assert error_info(early.value).reason in {"FLIGHT_ENDED", "MAKEGOOD_NOT_DUE"}

    placement = (
        await campaigns.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=makegood.id,
                episode_id=episode.id,
                ad_slot_id=episode.ad_slots[0].id,
                makegood_for_line_item_id=missed.id,
            ),
            metadata=bearer(key),
        )
    ).placement
    assert placement.makegood_for_line_item_id == missed.id

    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    await analytics.IngestListenerEvents(
        apb.IngestListenerEventsRequest(
            requests=listener_requests(episode.id, now - timedelta(minutes=10), 7)
        ),
        metadata=bearer(key),
    )
    report = await campaigns.GetPacing(
        pb.GetPacingRequest(campaign_id=campaign.id), metadata=bearer(key)
    )
    by_id = {p.line_item_id: p for p in report.line_item_pacings}
    assert by_id[missed.id].status == pb.PACING_STATUS_GOAL_MISSED
    assert by_id[missed.id].delivered_impressions == 0
    assert by_id[missed.id].makegood_delivered_impressions == 7
    assert by_id[missed.id].shortfall_impressions == 493
    assert by_id[makegood.id].delivered_impressions == 7
    assert report.pacing.delivered_impressions == 7
    assert report.pacing.shortfall_impressions == 493
