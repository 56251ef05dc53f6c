"""Every state-changing campaign RPC lands in the tenant's audit trail (ListAuditEvents),
through the outbox written in the change's transaction and the relay; refused changes
leave no record; the tenant service keeps each relayed event id once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TypeAlias

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.campaign.permissions import RULES
from services.shared.auth import Permission
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_inventory,
    create_line_item,
    create_sponsor,
    ts,
)
from tests.support import bearer, create_tenant

Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
WRITES = sorted(m.lstrip("/") for m, rule in RULES.items() if rule is Permission.CAMPAIGN_WRITE)


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


async def test_every_write_is_audited(
    campaigns: CampaignStub, catalog: CatalogStub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "audit")
    key = tenant.owner_key
    auth = bearer(key)
    episode = (await create_inventory(catalog, key)).episodes[0]
    sponsor = await create_sponsor(campaigns, key)
    spare = await create_sponsor(campaigns, key, name="Spare", category="")
    await campaigns.UpdateSponsor(
        pb.UpdateSponsorRequest(
            sponsor=pb.Sponsor(id=spare.id, contact_name="Ana"),
            update_mask=FieldMask(paths=["contact_name"]),
        ),
        metadata=auth,
    )
    await campaigns.DeleteSponsor(pb.DeleteSponsorRequest(sponsor_id=spare.id), metadata=auth)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    await campaigns.UpdateCampaign(
        pb.UpdateCampaignRequest(
            campaign=pb.Campaign(id=campaign.id, state=pb.CAMPAIGN_STATE_ACTIVE),
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=auth,
    )
    item = await create_line_item(campaigns, key, campaign.id)
    await campaigns.UpdateLineItem(
        pb.UpdateLineItemRequest(
            line_item=pb.LineItem(id=item.id, impression_goal=20_000),
            update_mask=FieldMask(paths=["impression_goal"]),
        ),
        metadata=auth,
    )
    proposal = (
        await campaigns.CreatePlacement(
            pb.CreatePlacementRequest(
                placement=pb.Placement(
                    line_item_id=item.id, episode_id=episode.id, position=kpb.AD_POSITION_PRE_ROLL
                )
            ),
            metadata=auth,
        )
    ).placement
    await campaigns.UpdatePlacement(
        pb.UpdatePlacementRequest(
            placement=pb.Placement(id=proposal.id, impression_goal=100),
            update_mask=FieldMask(paths=["impression_goal"]),
        ),
        metadata=auth,
    )
    booked = await campaigns.BookPlacement(
        pb.BookPlacementRequest(line_item_id=item.id, placement_id=proposal.id), metadata=auth
    )
    assert booked.placement.id == proposal.id
    assert booked.placement.ad_slot_id == episode.ad_slots[0].id
    await campaigns.DeletePlacement(
        pb.DeletePlacementRequest(placement_id=proposal.id), metadata=auth
    )
    draft = await create_line_item(campaigns, key, campaign.id, display_name="Draft")
    await campaigns.DeleteLineItem(pb.DeleteLineItemRequest(line_item_id=draft.id), metadata=auth)
    other = await create_campaign(campaigns, key, sponsor.id)
    await campaigns.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id=other.id), metadata=auth)
    deal = (
        await campaigns.CreateDeal(
            pb.CreateDealRequest(
                deal=pb.Deal(
                    display_name="Q3",
                    sponsor_id=sponsor.id,
                    expected_close_time=ts(datetime.now(UTC)),
                )
            ),
            metadata=auth,
        )
    ).deal
    await campaigns.UpdateDeal(
        pb.UpdateDealRequest(
            deal=pb.Deal(id=deal.id, notes="call back"), update_mask=FieldMask(paths=["notes"])
        ),
        metadata=auth,
    )
    await campaigns.TransitionDeal(
        pb.TransitionDealRequest(deal_id=deal.id, stage=pb.DEAL_STAGE_PROPOSAL), metadata=auth
    )
    await campaigns.DeleteDeal(pb.DeleteDealRequest(deal_id=deal.id), metadata=auth)
    # Refused: no record.
    with pytest.raises(grpc.aio.AioRpcError):
        await campaigns.DeleteCampaign(
            pb.DeleteCampaignRequest(campaign_id=campaign.id), metadata=auth
        )

    methods: set[str] = set()
    for _ in range(100):
        events = await audited(tenants, key)
        methods = {e.method for e in events if e.method.startswith("podmesh.campaign")}
        if methods >= set(WRITES):
            break
        await asyncio.sleep(0.1)
    assert sorted(methods) == WRITES
    events = await audited(tenants, key)
    deletes = [
        e for e in events if e.method == "podmesh.campaign.v1.CampaignService/DeleteCampaign"
    ]
    assert [e.resource_id for e in deletes] == [other.id]
    transition = next(e for e in events if e.method.endswith("/TransitionDeal"))
    assert (transition.details["from_stage"], transition.details["to_stage"]) == (
        "prospect",
        "proposal",
    )
    assert transition.actor_type == "api_key"
    assert len({e.id for e in events}) == len(events)


async def test_appended_events_are_kept_once(tenants: Tenants, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "audit")
    event = tenant_pb2.AuditEvent(
        id=str(uuid.uuid4()),
        event_time=ts(datetime.now(UTC)),
        actor_type="user",
        actor_id="u1",
        method="podmesh.catalog.v1.CatalogService/DeletePodcast",
        resource_type="podcast",
        resource_id="p1",
    )
    request = tenant_pb2.AppendAuditEventsRequest(tenant_id=tenant.id, audit_events=[event])
    first = await tenants.AppendAuditEvents(request, metadata=bearer(stack.admin_token))
    again = await tenants.AppendAuditEvents(request, metadata=bearer(stack.admin_token))
    assert (first.appended_count, first.duplicate_count) == (1, 0)
    assert (again.appended_count, again.duplicate_count) == (0, 1)
    assert [e.id for e in await audited(tenants, tenant.owner_key)].count(event.id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as tenant_key:
        await tenants.AppendAuditEvents(request, metadata=bearer(tenant.owner_key))
    assert tenant_key.value.code() == grpc.StatusCode.PERMISSION_DENIED
