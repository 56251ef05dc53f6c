"""BookPlacement: slots reserved for a flight with the catalog's byte range, exactly one
winner among concurrent bookings of one slot, idempotent resends, and every refusal
leaving the campaign tables untouched."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_inventory,
    create_line_item,
    create_sponsor,
    row_counts,
    seconds,
    ts,
    usd,
)
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "book")


def book(
    line_item_id: str, episode: kpb.Episode, slot: int = 1, **fields: object
) -> pb.BookPlacementRequest:
    return pb.BookPlacementRequest(
        line_item_id=line_item_id,
        episode_id=episode.id,
        ad_slot_id=episode.ad_slots[slot].id,
        **fields,  # type: ignore[arg-type]
    )


async def test_booking_copies_the_slot_and_cancel_frees_it(
    campaigns: CampaignStub, catalog: CatalogStub, tenant: TenantHandle
) -> None:
    key = tenant.owner_key
    inventory = await create_inventory(catalog, key)
    episode = inventory.episodes[0]
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    item = await create_line_item(campaigns, key, campaign.id)

    placement = (
        await campaigns.BookPlacement(
            book(item.id, episode, impression_goal=1000), metadata=bearer(key)
        )
    ).placement
    mid = episode.ad_slots[1]
    assert placement.state == pb.PLACEMENT_STATE_BOOKED
    assert (placement.start_byte, placement.end_byte) == (mid.start_byte, mid.end_byte)
    assert placement.position == kpb.AD_POSITION_MID_ROLL
    assert placement.podcast_id == inventory.podcast_id
    assert placement.campaign_id == campaign.id
    assert placement.flight_start_time == item.flight_start_time
    assert placement.flight_end_time == item.flight_end_time

    # A second line item of another campaign cannot take the slot over the same flight...
    rival_campaign = await create_campaign(
        campaigns, key, (await create_sponsor(campaigns, key, category="")).id
    )
    rival = await create_line_item(campaigns, key, rival_campaign.id)
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await campaigns.BookPlacement(book(rival.id, episode), metadata=bearer(key))
    assert taken.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(taken.value).reason == "SLOT_UNAVAILABLE"

    # Asking by position: the mid-roll is taken, the pre-roll is free.
    with pytest.raises(grpc.aio.AioRpcError) as no_mid:
        await campaigns.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=rival.id, episode_id=episode.id, position=kpb.AD_POSITION_MID_ROLL
            ),
            metadata=bearer(key),
        )
    assert error_info(no_mid.value).reason == "SLOT_UNAVAILABLE"
    pre = await campaigns.BookPlacement(
        pb.BookPlacementRequest(
            line_item_id=rival.id, episode_id=episode.id, position=kpb.AD_POSITION_PRE_ROLL
        ),
        metadata=bearer(key),
    )
    assert pre.placement.ad_slot_id == episode.ad_slots[0].id


async def test_release_frees_the_slot(
    campaigns: CampaignStub, catalog: CatalogStub, tenant: TenantHandle
) -> None:
    key = tenant.owner_key
    episode = (await create_inventory(catalog, key)).episodes[0]
    sponsor = await create_sponsor(campaigns, key, category="")
    first = await create_line_item(
        campaigns, key, (await create_campaign(campaigns, key, sponsor.id)).id
    )
    second = await create_line_item(
        campaigns, key, (await create_campaign(campaigns, key, sponsor.id)).id
    )
    placement = (
        await campaigns.BookPlacement(book(first.id, episode), metadata=bearer(key))
    ).placement
    await campaigns.DeletePlacement(
        pb.DeletePlacementRequest(placement_id=placement.id), metadata=bearer(key)
    )
    again = await campaigns.BookPlacement(book(second.id, episode), metadata=bearer(key))
    assert again.placement.state == pb.PLACEMENT_STATE_BOOKED

    # Cancelling the line item releases its booking too.
    await campaigns.UpdateLineItem(
        pb.UpdateLineItemRequest(
            line_item=pb.LineItem(id=second.id, state=pb.LINE_ITEM_STATE_CANCELLED),
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(key),
    )
    released = await campaigns.GetPlacement(
        pb.GetPlacementRequest(placement_id=again.placement.id), metadata=bearer(key)
    )
    assert released.placement.state == pb.PLACEMENT_STATE_CANCELLED
    third = await create_line_item(
        campaigns, key, (await create_campaign(campaigns, key, sponsor.id)).id
    )
    assert (
        await campaigns.BookPlacement(book(third.id, episode), metadata=bearer(key))
    ).placement.id


async def test_twenty_concurrent_bookings_of_one_slot(
    campaigns: CampaignStub, catalog: CatalogStub, tenant: TenantHandle
) -> None:
    key = tenant.owner_key
    episode = (await create_inventory(catalog, key)).episodes[0]
    items = []
    for _ in range(20):
        sponsor = await create_sponsor(campaigns, key, category="")
        campaign = await create_campaign(campaigns, key, sponsor.id)
        items.append(await create_line_item(campaigns, key, campaign.id))

    async def attempt(item: pb.LineItem) -> pb.Placement | grpc.aio.AioRpcError:
        try:
            return (
                await campaigns.BookPlacement(book(item.id, episode), metadata=bearer(key))
            ).placement
        except grpc.aio.AioRpcError as error:
            return error

    outcomes = await asyncio.gather(*(attempt(item) for item in items))
    won = [o for o in outcomes if isinstance(o, pb.Placement)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 19
    assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert {error_info(e).reason for e in lost} == {"SLOT_UNAVAILABLE"}
    booked = await campaigns.ListPlacements(
        pb.ListPlacementsRequest(episode_id=episode.id), metadata=bearer(key)
    )
    assert [p.id for p in booked.placements] == [won[0].id]


async def test_resent_booking_returns_the_first(
    campaigns: CampaignStub, catalog: CatalogStub, tenant: TenantHandle
) -> None:
    key = tenant.owner_key
    episode = (await create_inventory(catalog, key)).episodes[0]
    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id)
    item = await create_line_item(campaigns, key, campaign.id)
    request_id = str(uuid.uuid4())
    sends = await asyncio.gather(
        *(
            campaigns.BookPlacement(
                book(item.id, episode, request_id=request_id), metadata=bearer(key)
            )
            for _ in range(5)
        )
    )
    assert len({s.placement.id for s in sends}) == 1
    later = await campaigns.BookPlacement(
        book(item.id, episode, request_id=request_id), metadata=bearer(key)
    )
    assert later.placement == sends[0].placement

    other = await create_line_item(campaigns, key, campaign.id)
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await campaigns.BookPlacement(
            book(other.id, episode, 0, request_id=request_id), metadata=bearer(key)
        )
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_refusals_leave_rows_unchanged(
    campaigns: CampaignStub,
    catalog: CatalogStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
) -> None:
    key = tenant.owner_key
    inventory = await create_inventory(catalog, key, episodes=2)
    explicit = await create_inventory(catalog, key, explicit=True, categories=("Comedy",))
    unpublished = (
        await catalog.CreateEpisode(
            kpb.CreateEpisodeRequest(
                podcast_id=inventory.podcast_id,
                episode=kpb.Episode(
                    title="Draft",
                    media_url=f"https://cdn.example.com/{uuid.uuid4().hex}.mp3",
                    ad_slots=[
                        kpb.AdSlot(
                            position=kpb.AD_POSITION_PRE_ROLL,
                            start_offset=seconds(0),
                            duration=seconds(30),
                            insertion=kpb.AD_INSERTION_DYNAMIC,
                        )
                    ],
                ),
            ),
            metadata=bearer(key),
        )
    ).episode
    episode = inventory.episodes[0]
    sponsor = await create_sponsor(campaigns, key, category="meal kits")
    campaign = await create_campaign(campaigns, key, sponsor.id, budget=30_000)
    item = await create_line_item(
        campaigns,
        key,
        campaign.id,
        targeting=pb.Targeting(categories=["Business"], exclude_explicit=True),
    )
    rival_sponsor = await create_sponsor(campaigns, key, name="Rival", category=" Meal Kits")
    rival_campaign = await create_campaign(campaigns, key, rival_sponsor.id)
    rival = await create_line_item(campaigns, key, rival_campaign.id)
    await campaigns.BookPlacement(book(rival.id, episode, 0), metadata=bearer(key))
    # Flight outside the campaign's (only the schema owner can make one: the API refuses).
    shrunk = await create_campaign(campaigns, key, rival_sponsor.id)
    outside = await create_line_item(campaigns, key, shrunk.id)
    await owner_conn.execute(
        "UPDATE campaigns SET flight_end = flight_end - interval '1 day' WHERE campaign_id = $1",
        uuid.UUID(shrunk.id),
    )

    before = await row_counts(owner_conn, tenant.id)
    refusals = [
        (book(item.id, episode), grpc.StatusCode.FAILED_PRECONDITION, "COMPETITIVE_CONFLICT"),
        (
            book(item.id, explicit.episodes[0]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TARGETING_MISMATCH",
        ),
        (
            pb.BookPlacementRequest(
                line_item_id=item.id, episode_id=str(uuid.uuid4()), ad_slot_id=str(uuid.uuid4())
            ),
            grpc.StatusCode.NOT_FOUND,
            "EPISODE_NOT_FOUND",
        ),
        (
            pb.BookPlacementRequest(
                line_item_id=item.id,
                episode_id=inventory.episodes[1].id,
                ad_slot_id=str(uuid.uuid4()),
            ),
            grpc.StatusCode.NOT_FOUND,
            "AD_SLOT_NOT_FOUND",
        ),
        (
            pb.BookPlacementRequest(
                line_item_id=item.id, episode_id=unpublished.id, position=kpb.AD_POSITION_PRE_ROLL
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "EPISODE_NOT_PUBLISHED",
        ),
        (
            book(item.id, inventory.episodes[1], impression_goal=20_000),
            grpc.StatusCode.FAILED_PRECONDITION,
            "OVER_BUDGET",
        ),
        (
            book(outside.id, inventory.episodes[1]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FLIGHT_OUTSIDE_CAMPAIGN",
        ),
        (book("not-a-uuid", episode), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (
            book(item.id, inventory.episodes[1], impression_goal=-5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
    ]
    for request, code, reason in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await campaigns.BookPlacement(request, metadata=bearer(key))
        assert (refused.value.code(), error_info(refused.value).reason) == (code, reason), request
        assert await row_counts(owner_conn, tenant.id) == before

    with pytest.raises(grpc.aio.AioRpcError) as over:
        await campaigns.BookPlacement(
            book(item.id, inventory.episodes[1], impression_goal=20_000), metadata=bearer(key)
        )
    # 20,000 impressions at USD 25.00 CPM commit 50,000 cents; 30,000 remain.
    assert error_info(over.value).metadata["remaining_minor_units"] == "30000"
    assert "30000" in (over.value.details() or "")

    bad_inputs = [
        pb.CreateCampaignRequest(
            campaign=pb.Campaign(
                sponsor_id=sponsor.id,
                display_name="x",
                budget=usd(1, "usd"),
                flight_start_time=ts(datetime.now(UTC)),
                flight_end_time=ts(datetime.now(UTC) - timedelta(days=1)),
            )
        ),
    ]
    for bad in bad_inputs:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await campaigns.CreateCampaign(bad, metadata=bearer(key))
        assert set(violated_fields(invalid.value)) == {
            "campaign.budget.currency_code",
            "campaign.flight_end_time",
        }
    assert await row_counts(owner_conn, tenant.id) == before
