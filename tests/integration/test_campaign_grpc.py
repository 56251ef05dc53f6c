"""Campaign resources over native gRPC on the campaign's own port: standard methods,
money, flights, update masks, paging, and NOT_FOUND across tenants."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    CampaignStub,
    create_campaign,
    create_line_item,
    create_sponsor,
    row_counts,
    usd,
)
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "camp")


async def test_sponsor_round_trip_and_paging(campaigns: CampaignStub, tenant: TenantHandle) -> None:
    key = tenant.owner_key
    created = await create_sponsor(campaigns, key, name="  Acme Meals ", category=" Meal  Kits ")
    assert created.display_name == "Acme Meals"
    assert created.competitive_category == "Meal Kits"
    assert list(created.iab_categories) == ["210"]
    got = await campaigns.GetSponsor(
        pb.GetSponsorRequest(sponsor_id=created.id), metadata=bearer(key)
    )
    assert got.sponsor == created

    for name in ("Beta", "Gamma", "Delta"):
        await create_sponsor(campaigns, key, name=name, category="")
    names: list[str] = []
    token = ""
    while True:
        page = await campaigns.ListSponsors(
            pb.ListSponsorsRequest(page_size=2, page_token=token), metadata=bearer(key)
        )
        names += [s.display_name for s in page.sponsors]
        token = page.next_page_token
        if not token:
            break
    assert names == ["Acme Meals", "Beta", "Delta", "Gamma"]
    only = await campaigns.ListSponsors(
        pb.ListSponsorsRequest(competitive_category="MEAL KITS"), metadata=bearer(key)
    )
    assert [s.id for s in only.sponsors] == [created.id]

    updated = await campaigns.UpdateSponsor(
        pb.UpdateSponsorRequest(
            sponsor=pb.Sponsor(id=created.id, domain="Acme.Example", display_name="ignored"),
            update_mask=FieldMask(paths=["domain"]),
        ),
        metadata=bearer(key),
    )
    assert updated.sponsor.domain == "acme.example"
    assert updated.sponsor.display_name == "Acme Meals"

    with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
        await campaigns.UpdateSponsor(
            pb.UpdateSponsorRequest(
                sponsor=pb.Sponsor(id=created.id), update_mask=FieldMask(paths=["id"])
            ),
            metadata=bearer(key),
        )
    assert bad_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad_mask.value) == ["update_mask"]

    await campaigns.DeleteSponsor(
        pb.DeleteSponsorRequest(sponsor_id=created.id), metadata=bearer(key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await campaigns.GetSponsor(
            pb.GetSponsorRequest(sponsor_id=created.id), metadata=bearer(key)
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(gone.value).reason == "SPONSOR_NOT_FOUND"


async def test_campaign_and_line_item_money_and_flights(
    campaigns: CampaignStub, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id, budget=500_000)
    assert campaign.state == pb.CAMPAIGN_STATE_DRAFT
    assert campaign.budget == usd(500_000)

    item = await create_line_item(campaigns, key, campaign.id)
    # The flight defaults to the campaign's; the priority to 5; pacing to even.
    assert item.flight_start_time == campaign.flight_start_time
    assert item.flight_end_time == campaign.flight_end_time
    assert item.priority == 5
    assert item.pacing_strategy == pb.PACING_STRATEGY_EVEN
    assert item.rate == usd(2500)

    before = await row_counts(owner_conn, tenant.id)
    with pytest.raises(grpc.aio.AioRpcError) as euros:
        await create_line_item(campaigns, key, campaign.id, rate=usd(100, "EUR"))
    assert euros.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(euros.value) == ["line_item.rate.currency_code"]

    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await create_line_item(campaigns, key, campaign.id, rate=usd(-1))
    assert violated_fields(negative.value) == ["line_item.rate.minor_units"]

    with pytest.raises(grpc.aio.AioRpcError) as overflow:
        await create_line_item(
            campaigns, key, campaign.id, rate=usd(10**15), impression_goal=10**12
        )
    assert violated_fields(overflow.value) == ["line_item.rate"]

    late = campaign.flight_end_time.ToDatetime() + timedelta(days=1)
    end = pb.LineItem().flight_end_time
    end.FromDatetime(late)
    with pytest.raises(grpc.aio.AioRpcError) as outside:
        await create_line_item(campaigns, key, campaign.id, flight_end_time=end)
    assert violated_fields(outside.value) == ["line_item.flight_start_time"]

    start = campaign.flight_end_time
    with pytest.raises(grpc.aio.AioRpcError) as backwards:
        await create_campaign(
            campaigns,
            key,
            sponsor.id,
            start=start.ToDatetime(),
            end=campaign.flight_start_time.ToDatetime(),
        )
    assert "campaign.flight_end_time" in violated_fields(backwards.value)
    assert await row_counts(owner_conn, tenant.id) == before

    # The currency is fixed once line items exist.
    with pytest.raises(grpc.aio.AioRpcError) as fixed:
        await campaigns.UpdateCampaign(
            pb.UpdateCampaignRequest(
                campaign=pb.Campaign(id=campaign.id, budget=usd(500_000, "EUR")),
                update_mask=FieldMask(paths=["budget"]),
            ),
            metadata=bearer(key),
        )
    assert fixed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(fixed.value).reason == "CAMPAIGN_CURRENCY_FIXED"

    listed = await campaigns.ListLineItems(
        pb.ListLineItemsRequest(campaign_id=campaign.id), metadata=bearer(key)
    )
    assert [i.id for i in listed.line_items] == [item.id]

    # A draft campaign goes with its line items.
    await campaigns.DeleteCampaign(
        pb.DeleteCampaignRequest(campaign_id=campaign.id), metadata=bearer(key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await campaigns.GetLineItem(
            pb.GetLineItemRequest(line_item_id=item.id), metadata=bearer(key)
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sponsor_in_use_is_kept(campaigns: CampaignStub, tenant: TenantHandle) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    await create_campaign(campaigns, key, sponsor.id)
    with pytest.raises(grpc.aio.AioRpcError) as used:
        await campaigns.DeleteSponsor(
            pb.DeleteSponsorRequest(sponsor_id=sponsor.id), metadata=bearer(key)
        )
    assert used.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(used.value).reason == "SPONSOR_IN_USE"


async def test_unknown_ids_and_other_tenants(
    campaigns: CampaignStub,
    tenant: TenantHandle,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    key = tenant.owner_key
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    item = await create_line_item(campaigns, key, campaign.id)
    deal = (
        await campaigns.CreateDeal(
            pb.CreateDealRequest(deal=pb.Deal(display_name="Q3", sponsor_id=sponsor.id)),
            metadata=bearer(key),
        )
    ).deal
    other = await create_tenant(tenants, stack.admin_token, "camp")
    calls: list[Awaitable[Any]] = [
        campaigns.GetSponsor(
            pb.GetSponsorRequest(sponsor_id=sponsor.id), metadata=bearer(other.owner_key)
        ),
        campaigns.GetCampaign(
            pb.GetCampaignRequest(campaign_id=campaign.id), metadata=bearer(other.owner_key)
        ),
        campaigns.GetLineItem(
            pb.GetLineItemRequest(line_item_id=item.id), metadata=bearer(other.owner_key)
        ),
        campaigns.GetDeal(pb.GetDealRequest(deal_id=deal.id), metadata=bearer(other.owner_key)),
        campaigns.CreateCampaign(
            pb.CreateCampaignRequest(
                campaign=pb.Campaign(
                    sponsor_id=sponsor.id,
                    display_name="x",
                    budget=usd(1),
                    flight_start_time=campaign.flight_start_time,
                    flight_end_time=campaign.flight_end_time,
                )
            ),
            metadata=bearer(other.owner_key),
        ),
        campaigns.GetPacing(
            pb.GetPacingRequest(line_item_id=item.id), metadata=bearer(other.owner_key)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await campaigns.GetCampaign(pb.GetCampaignRequest(campaign_id="nope"), metadata=bearer(key))
    assert violated_fields(bad_id.value) == ["campaign_id"]
