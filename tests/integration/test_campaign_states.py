"""Every state change of campaigns, line items and deals, table-driven from the enums:
each pair of distinct states is tried, the edges the enums' comments allow succeed and
every other pair is FAILED_PRECONDITION naming the current and requested state."""

from __future__ import annotations

import itertools
import uuid
from typing import Any, cast

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.campaign.deals import DEAL_EVENTS_STREAM
from tests.campaign_support import CampaignStub, create_campaign, create_line_item, create_sponsor
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

C = pb.CampaignState
L = pb.LineItemState
D = pb.DealStage

# Read off CampaignState's comment: draft to active, active and paused to each other,
# anything but completed to cancelled. Line items: "the same changes".
CAMPAIGN_ALLOWED = {
    (C.CAMPAIGN_STATE_DRAFT, C.CAMPAIGN_STATE_ACTIVE),
    (C.CAMPAIGN_STATE_ACTIVE, C.CAMPAIGN_STATE_PAUSED),
    (C.CAMPAIGN_STATE_PAUSED, C.CAMPAIGN_STATE_ACTIVE),
    (C.CAMPAIGN_STATE_DRAFT, C.CAMPAIGN_STATE_CANCELLED),
    (C.CAMPAIGN_STATE_ACTIVE, C.CAMPAIGN_STATE_CANCELLED),
    (C.CAMPAIGN_STATE_PAUSED, C.CAMPAIGN_STATE_CANCELLED),
}
# Read off DealStage's comment.
_BEFORE_LIVE = (
    D.DEAL_STAGE_PROSPECT,
    D.DEAL_STAGE_PROPOSAL,
    D.DEAL_STAGE_HOLD,
    D.DEAL_STAGE_BOOKED,
)
DEAL_ALLOWED = {
    (D.DEAL_STAGE_PROSPECT, D.DEAL_STAGE_PROPOSAL),
    (D.DEAL_STAGE_PROPOSAL, D.DEAL_STAGE_HOLD),
    (D.DEAL_STAGE_PROPOSAL, D.DEAL_STAGE_BOOKED),
    (D.DEAL_STAGE_PROPOSAL, D.DEAL_STAGE_PROSPECT),
    (D.DEAL_STAGE_HOLD, D.DEAL_STAGE_BOOKED),
    (D.DEAL_STAGE_HOLD, D.DEAL_STAGE_PROPOSAL),
    (D.DEAL_STAGE_BOOKED, D.DEAL_STAGE_LIVE),
    (D.DEAL_STAGE_LIVE, D.DEAL_STAGE_DELIVERED),
    (D.DEAL_STAGE_DELIVERED, D.DEAL_STAGE_RECONCILED),
    (D.DEAL_STAGE_DELIVERED, D.DEAL_STAGE_MAKEGOOD),
    (D.DEAL_STAGE_RECONCILED, D.DEAL_STAGE_INVOICED),
    (D.DEAL_STAGE_RECONCILED, D.DEAL_STAGE_MAKEGOOD),
    (D.DEAL_STAGE_MAKEGOOD, D.DEAL_STAGE_LIVE),
    (D.DEAL_STAGE_INVOICED, D.DEAL_STAGE_PAID),
} | {(stage, D.DEAL_STAGE_LOST) for stage in _BEFORE_LIVE}


def pairs(values: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.permutations(values, 2)]


def states_of(enum: Any) -> list[int]:
    return [v for v in enum.values() if v != 0]


def name(enum: Any, value: int) -> str:
    full: str = enum.Name(value)
    return full.split("_STATE_")[-1].split("_STAGE_")[-1].lower()


@pytest.fixture(scope="module")
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "states")


async def _force(
    conn: asyncpg.Connection, table: str, column: str, key: str, value: int, id_: str
) -> None:
    # The schema owner moves a row to the starting state directly (some states, e.g.
    # completed, only the clock reaches).
    await conn.execute(f"UPDATE {table} SET {column} = $1 WHERE {key} = $2", value, uuid.UUID(id_))


@pytest.mark.parametrize(("current", "requested"), pairs(states_of(C)))
async def test_campaign_state_changes(
    campaigns: CampaignStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    current: int,
    requested: int,
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    await _force(owner_conn, "campaigns", "state", "campaign_id", current, campaign.id)
    call = campaigns.UpdateCampaign(
        pb.UpdateCampaignRequest(
            campaign=pb.Campaign(id=campaign.id, state=requested),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(key),
    )
    if (current, requested) in CAMPAIGN_ALLOWED:
        assert (await call).campaign.state == requested
        return
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info.metadata["current_state"] == name(C, current)
    assert info.metadata["requested_state"] == name(C, requested)
    assert f"from {name(C, current)} to {name(C, requested)}" in (refused.value.details() or "")


@pytest.mark.parametrize(("current", "requested"), pairs(states_of(L)))
async def test_line_item_state_changes(
    campaigns: CampaignStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    current: int,
    requested: int,
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    item = await create_line_item(campaigns, key, campaign.id)
    await _force(owner_conn, "line_items", "state", "line_item_id", current, item.id)
    call = campaigns.UpdateLineItem(
        pb.UpdateLineItemRequest(
            line_item=pb.LineItem(id=item.id, state=requested),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(key),
    )
    if (current, requested) in CAMPAIGN_ALLOWED:
        assert (await call).line_item.state == requested
        return
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info.metadata["current_state"] == name(L, current)
    assert info.metadata["requested_state"] == name(L, requested)


@pytest.mark.parametrize(("current", "requested"), pairs(states_of(D)))
async def test_deal_transitions(
    campaigns: CampaignStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
    current: int,
    requested: int,
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    deal = (
        await campaigns.CreateDeal(
            pb.CreateDealRequest(
                deal=pb.Deal(display_name="Q3", sponsor_id=sponsor.id, campaign_id=campaign.id)
            ),
            metadata=bearer(key),
        )
    ).deal
    await _force(owner_conn, "deals", "stage", "deal_id", current, deal.id)
    call = campaigns.TransitionDeal(
        pb.TransitionDealRequest(
            deal_id=deal.id,
            stage=requested,  # type: ignore[arg-type]
            expected_stage=current,  # type: ignore[arg-type]
            note="table test",
        ),
        metadata=bearer(key),
    )
    if (current, requested) in DEAL_ALLOWED:
        moved = await call
        assert moved.deal.stage == requested
        assert (moved.deal_event.from_stage, moved.deal_event.to_stage) == (current, requested)
        return
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info.metadata["current_stage"] == name(D, current)
    assert info.metadata["requested_stage"] == name(D, requested)


async def test_a_masked_state_must_be_given(campaigns: CampaignStub, tenant: TenantHandle) -> None:
    sponsor = await create_sponsor(campaigns, tenant.owner_key)
    campaign = await create_campaign(campaigns, tenant.owner_key, sponsor.id)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await campaigns.UpdateCampaign(
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id=campaign.id), update_mask=FieldMask(paths=["state"])
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(missing.value) == ["campaign.state"]


async def test_deal_pipeline_history_and_stale_stage(
    campaigns: CampaignStub, tenant: TenantHandle, stack: Stack
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    deal = (
        await campaigns.CreateDeal(
            pb.CreateDealRequest(deal=pb.Deal(display_name="Q3", sponsor_id=sponsor.id)),
            metadata=bearer(key),
        )
    ).deal
    assert deal.stage == D.DEAL_STAGE_PROSPECT
    await campaigns.TransitionDeal(
        pb.TransitionDealRequest(deal_id=deal.id, stage=D.DEAL_STAGE_PROPOSAL, note="deck sent"),
        metadata=bearer(key),
    )
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await campaigns.TransitionDeal(
            pb.TransitionDealRequest(
                deal_id=deal.id, stage=D.DEAL_STAGE_PROPOSAL, expected_stage=D.DEAL_STAGE_PROSPECT
            ),
            metadata=bearer(key),
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert error_info(stale.value).metadata["current_stage"] == "proposal"

    # Booked needs a campaign.
    with pytest.raises(grpc.aio.AioRpcError) as no_campaign:
        await campaigns.TransitionDeal(
            pb.TransitionDealRequest(deal_id=deal.id, stage=D.DEAL_STAGE_BOOKED),
            metadata=bearer(key),
        )
    assert error_info(no_campaign.value).reason == "DEAL_CAMPAIGN_REQUIRED"
    campaign = await create_campaign(campaigns, key, sponsor.id)
    await campaigns.UpdateDeal(
        pb.UpdateDealRequest(
            deal=pb.Deal(id=deal.id, campaign_id=campaign.id),
            update_mask=FieldMask(paths=["campaign_id"]),
        ),
        metadata=bearer(key),
    )
    booked = await campaigns.TransitionDeal(
        pb.TransitionDealRequest(
            deal_id=deal.id,
            stage=D.DEAL_STAGE_BOOKED,
            expected_stage=D.DEAL_STAGE_PROPOSAL,
            note="IO signed",
        ),
        metadata=bearer(key),
    )
    assert booked.deal.stage == D.DEAL_STAGE_BOOKED
    # Booking the deal leaves its campaign alone.
    unchanged = await campaigns.GetCampaign(
        pb.GetCampaignRequest(campaign_id=campaign.id), metadata=bearer(key)
    )
    assert unchanged.campaign.state == C.CAMPAIGN_STATE_DRAFT

    events = await campaigns.ListDealEvents(
        pb.ListDealEventsRequest(deal_id=deal.id), metadata=bearer(key)
    )
    assert [(e.from_stage, e.to_stage, e.note) for e in events.deal_events] == [
        (D.DEAL_STAGE_PROSPECT, D.DEAL_STAGE_PROPOSAL, "deck sent"),
        (D.DEAL_STAGE_PROPOSAL, D.DEAL_STAGE_BOOKED, "IO signed"),
    ]
    assert {e.actor_type for e in events.deal_events} == {"api_key"}
    assert all(e.actor_id for e in events.deal_events)

    # Each transition is also published on the event bus.
    bus = aioredis.from_url(stack.redis_url)
    try:
        published = cast(
            list[tuple[bytes, dict[bytes, bytes]]], await bus.xrange(DEAL_EVENTS_STREAM)
        )
    finally:
        await bus.aclose()
    mine = [
        (fields[b"from_stage"], fields[b"to_stage"])
        for _, fields in published
        if fields[b"deal_id"] == deal.id.encode()
    ]
    assert mine == [(b"prospect", b"proposal"), (b"proposal", b"booked")]

    with pytest.raises(grpc.aio.AioRpcError) as kept:
        await campaigns.DeleteDeal(pb.DeleteDealRequest(deal_id=deal.id), metadata=bearer(key))
    assert error_info(kept.value).reason == "DEAL_NOT_DELETABLE"
