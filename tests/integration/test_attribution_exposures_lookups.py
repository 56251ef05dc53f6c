"""The campaign service's platform lookups attribution resolves exposures with:
ListSlotPlacements and BatchGetLineItems answer the platform administrator for the
named tenant only, refuse tenants' credentials, and bound their input."""

from __future__ import annotations

import uuid

import grpc
import pytest
from podmesh.campaign.v1 import campaign_pb2 as cpb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.attribution_exposures_support import booked_slot, flight_start_yesterday
from tests.campaign_support import CampaignStub, CatalogStub
from tests.catalog.support import FeedServer
from tests.support import bearer, create_tenant, violated_fields


async def test_slot_placements_and_line_items_for_the_platform_only(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "lookups")
    other = await create_tenant(tenants, stack.admin_token, "lookother")
    booked = await booked_slot(catalog, campaigns, feeds, tenant, flight_start_yesterday())
    admin = bearer(stack.admin_token)
    slot = booked.placement.ad_slot_id

    placements = await campaigns.ListSlotPlacements(
        cpb.ListSlotPlacementsRequest(tenant_id=tenant.id, ad_slot_ids=[slot, str(uuid.uuid4())]),
        metadata=admin,
    )
    assert [(p.id, p.line_item_id, p.ad_slot_id) for p in placements.placements] == [
        (booked.placement.id, booked.line_item.id, slot)
    ]
    assert placements.placements[0].flight_start_time.ToDatetime().date() == (
        booked.flight_start.date()
    )
    items = await campaigns.BatchGetLineItems(
        cpb.BatchGetLineItemsRequest(
            tenant_id=tenant.id, line_item_ids=[booked.line_item.id, str(uuid.uuid4())]
        ),
        metadata=admin,
    )
    assert [(i.id, i.campaign_id) for i in items.line_items] == [
        (booked.line_item.id, booked.line_item.campaign_id)
    ]

    # Another tenant named: nothing of this one.
    elsewhere = await campaigns.ListSlotPlacements(
        cpb.ListSlotPlacementsRequest(tenant_id=other.id, ad_slot_ids=[slot]), metadata=admin
    )
    assert list(elsewhere.placements) == []
    none = await campaigns.BatchGetLineItems(
        cpb.BatchGetLineItemsRequest(tenant_id=other.id, line_item_ids=[booked.line_item.id]),
        metadata=admin,
    )
    assert list(none.line_items) == []

    for call in (
        campaigns.ListSlotPlacements(
            cpb.ListSlotPlacementsRequest(tenant_id=tenant.id, ad_slot_ids=[slot]),
            metadata=bearer(tenant.owner_key),
        ),
        campaigns.BatchGetLineItems(
            cpb.BatchGetLineItemsRequest(tenant_id=tenant.id, line_item_ids=[booked.line_item.id]),
            metadata=bearer(tenant.owner_key),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await campaigns.ListSlotPlacements(
            cpb.ListSlotPlacementsRequest(
                tenant_id="x", ad_slot_ids=[str(uuid.uuid4()) for _ in range(501)]
            ),
            metadata=admin,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad.value) == ["tenant_id", "ad_slot_ids"]
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await campaigns.BatchGetLineItems(
            cpb.BatchGetLineItemsRequest(tenant_id=tenant.id, line_item_ids=["nope"]),
            metadata=admin,
        )
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(empty.value) == ["line_item_ids[0]"]
