"""The completion sweep: booked placements go live when their flight starts under an
active line item and campaign; flights that end complete campaigns, line items and
placements; two replicas sweeping at once move and audit everything exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.campaign.sweep import Sweeper
from services.shared.db import Database
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_inventory,
    create_line_item,
    create_sponsor,
)
from tests.support import bearer, create_tenant


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=1, max_size=4)
    try:
        yield database
    finally:
        await database.close()


async def test_flights_start_and_end(
    campaigns: CampaignStub,
    catalog: CatalogStub,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    db: Database,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "sweep")
    key = tenant.owner_key
    now = datetime.now(UTC)
    episode = (await create_inventory(catalog, key)).episodes[0]
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(
        campaigns, key, sponsor.id, start=now - timedelta(days=2), end=now + timedelta(hours=1)
    )
    item = await create_line_item(campaigns, key, campaign.id)
    idle = await create_line_item(campaigns, key, campaign.id, display_name="never activated")
    placement = (
        await campaigns.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=item.id, episode_id=episode.id, ad_slot_id=episode.ad_slots[0].id
            ),
            metadata=bearer(key),
        )
    ).placement
    for update in (
        pb.UpdateCampaignRequest(
            campaign=pb.Campaign(id=campaign.id, state=pb.CAMPAIGN_STATE_ACTIVE),
            update_mask=FieldMask(paths=["state"]),
        ),
    ):
        await campaigns.UpdateCampaign(update, metadata=bearer(key))
    await campaigns.UpdateLineItem(
        pb.UpdateLineItemRequest(
            line_item=pb.LineItem(id=item.id, state=pb.LINE_ITEM_STATE_ACTIVE),
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(key),
    )

    replicas = [Sweeper(db, 60), Sweeper(db, 60)]
    await asyncio.gather(*(r.sweep(now) for r in replicas))
    live = await campaigns.GetPlacement(
        pb.GetPlacementRequest(placement_id=placement.id), metadata=bearer(key)
    )
    assert live.placement.state == pb.PLACEMENT_STATE_LIVE

    later = now + timedelta(hours=2)
    await asyncio.gather(*(r.sweep(later) for r in replicas))
    assert (await replicas[0].sweep(later)) == 0
    got = await campaigns.GetCampaign(
        pb.GetCampaignRequest(campaign_id=campaign.id), metadata=bearer(key)
    )
    assert got.campaign.state == pb.CAMPAIGN_STATE_COMPLETED
    done = await campaigns.GetLineItem(
        pb.GetLineItemRequest(line_item_id=item.id), metadata=bearer(key)
    )
    assert done.line_item.state == pb.LINE_ITEM_STATE_COMPLETED
    draft = await campaigns.GetLineItem(
        pb.GetLineItemRequest(line_item_id=idle.id), metadata=bearer(key)
    )
    assert draft.line_item.state == pb.LINE_ITEM_STATE_DRAFT
    finished = await campaigns.GetPlacement(
        pb.GetPlacementRequest(placement_id=placement.id), metadata=bearer(key)
    )
    assert finished.placement.state == pb.PLACEMENT_STATE_COMPLETED

    audited = await owner_conn.fetch(
        """
        SELECT resource_type, resource_id, details->>'to_state' AS state
        FROM campaign_audit_outbox WHERE tenant_id = $1 AND actor_id = 'campaign-sweep'
        ORDER BY occurred_at
        """,
        uuid.UUID(tenant.id),
    )
    assert sorted((r["resource_type"], r["resource_id"], r["state"]) for r in audited) == sorted(
        [
            ("placement", placement.id, "live"),
            ("campaign", campaign.id, "completed"),
            ("line_item", item.id, "completed"),
            ("placement", placement.id, "completed"),
        ]
    )
