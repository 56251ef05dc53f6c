"""What bookings commit of a campaign's budget: concurrent bookings of distinct slots in
one campaign never commit more than its budget, and the committed goals kept on each
line item (migration 0055) stay equal to the sum over its placements through concurrent
bookings, deletions and cancellations."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_inventory,
    create_line_item,
    create_sponsor,
)
from tests.support import TenantHandle, bearer, create_tenant, error_info

# CPM at 2,500 minor units per thousand (create_line_item's rate): a booking of 1,000
# impressions commits 2,500.
GOAL = 1000
COST = 2500


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "budget")


async def attempt(
    campaigns: CampaignStub, key: str, request: pb.BookPlacementRequest
) -> pb.Placement | grpc.aio.AioRpcError:
    try:
        return (await campaigns.BookPlacement(request, metadata=bearer(key))).placement
    except grpc.aio.AioRpcError as error:
        return error


async def test_concurrent_bookings_of_one_campaign_stay_within_its_budget(
    campaigns: CampaignStub, catalog: CatalogStub, tenant: TenantHandle
) -> None:
    key = tenant.owner_key
    inventory = await create_inventory(catalog, key, episodes=6)
    sponsor = await create_sponsor(campaigns, key, category="")
    campaign = await create_campaign(campaigns, key, sponsor.id, budget=3 * COST)
    items = [await create_line_item(campaigns, key, campaign.id) for _ in range(3)]
    requests = [
        pb.BookPlacementRequest(
            line_item_id=items[n % 3].id,
            episode_id=episode.id,
            ad_slot_id=slot.id,
            impression_goal=GOAL,
        )
        for n, (episode, slot) in enumerate((e, s) for e in inventory.episodes for s in e.ad_slots)
    ]
    outcomes = await asyncio.gather(*(attempt(campaigns, key, r) for r in requests))
    won = [o for o in outcomes if isinstance(o, pb.Placement)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 3
    assert len(lost) == len(requests) - 3
    assert {error_info(e).reason for e in lost} == {"OVER_BUDGET"}
    assert {error_info(e).metadata["remaining_minor_units"] for e in lost} == {"0"}


async def committed(conn: asyncpg.Connection, tenant_id: str) -> dict[uuid.UUID, tuple[int, int]]:
    """Per line item: (kept goal, kept count) and the sum over its placements."""
    rows = await conn.fetch(
        """
        SELECT l.line_item_id, l.booked_goal, l.booked_placements,
            coalesce(sum(p.impression_goal) FILTER (WHERE p.state IN (2, 3, 4)), 0) AS goal,
            count(p.placement_id) FILTER (WHERE p.state IN (2, 3, 4)) AS n
        FROM line_items l
        LEFT JOIN placements p ON p.tenant_id = l.tenant_id AND p.line_item_id = l.line_item_id
        WHERE l.tenant_id = $1
        GROUP BY l.line_item_id, l.booked_goal, l.booked_placements
        """,
        uuid.UUID(tenant_id),
    )
    for row in rows:
        assert (row["booked_goal"], row["booked_placements"]) == (row["goal"], row["n"]), row
    return {row["line_item_id"]: (row["goal"], row["n"]) for row in rows}


async def test_committed_goals_follow_concurrent_bookings_and_releases(
    campaigns: CampaignStub,
    catalog: CatalogStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
) -> None:
    key = tenant.owner_key
    inventory = await create_inventory(catalog, key, episodes=8)
    slots = [(e, s) for e in inventory.episodes for s in e.ad_slots]
    sponsor = await create_sponsor(campaigns, key, category="")
    campaign = await create_campaign(campaigns, key, sponsor.id, budget=10**9)
    items = [await create_line_item(campaigns, key, campaign.id) for _ in range(4)]
    proposed = (
        await campaigns.CreatePlacement(
            pb.CreatePlacementRequest(
                placement=pb.Placement(
                    line_item_id=items[3].id,
                    episode_id=slots[-1][0].id,
                    ad_slot_id=slots[-1][1].id,
                    impression_goal=GOAL,
                )
            ),
            metadata=bearer(key),
        )
    ).placement

    def booking(n: int, goal: int) -> pb.BookPlacementRequest:
        episode, slot = slots[n % (len(slots) - 1)]
        return pb.BookPlacementRequest(
            line_item_id=items[n % 3].id,
            episode_id=episode.id,
            ad_slot_id=slot.id,
            impression_goal=goal,
        )

    # Every slot but the proposal's twice (one booking of each pair loses), with goals
    # that differ.
    first = await asyncio.gather(
        *(attempt(campaigns, key, booking(n, GOAL + n)) for n in range(2 * (len(slots) - 1)))
    )
    booked = [o for o in first if isinstance(o, pb.Placement)]
    assert len(booked) == len(slots) - 1
    before = await committed(owner_conn, tenant.id)
    assert sum(n for _, n in before.values()) == len(slots) - 1

    async def cancel(item: pb.LineItem) -> None:
        await campaigns.UpdateLineItem(
            pb.UpdateLineItemRequest(
                line_item=pb.LineItem(id=item.id, state=pb.LINE_ITEM_STATE_CANCELLED),
                update_mask=FieldMask(paths=["state"]),
            ),
            metadata=bearer(key),
        )

    async def delete(placement: pb.Placement) -> None:
        await campaigns.DeletePlacement(
            pb.DeletePlacementRequest(placement_id=placement.id), metadata=bearer(key)
        )

    # Concurrently: the first line item cancelled (its bookings released), bookings of
    # the third deleted, the proposal booked, and bookings by the second of slots that
    # may have been freed meanwhile, won or refused.
    deleted = [p for p in booked if p.line_item_id == items[2].id][:3]
    second = await asyncio.gather(
        cancel(items[0]),
        *(delete(p) for p in deleted),
        attempt(
            campaigns,
            key,
            pb.BookPlacementRequest(line_item_id=items[3].id, placement_id=proposed.id),
        ),
        *(
            attempt(campaigns, key, booking(n, 3 * GOAL))
            for n in range(len(slots) - 1)
            if n % 3 == 1
        ),
    )
    # The cancellation and deletions succeeded; the bookings were won or refused.
    assert second[: 1 + len(deleted)] == [None] * (1 + len(deleted))
    assert isinstance(second[1 + len(deleted)], pb.Placement)
    after = await committed(owner_conn, tenant.id)
    assert after[uuid.UUID(items[0].id)] == (0, 0)
    assert after[uuid.UUID(items[3].id)] == (GOAL, 1)
    assert after[uuid.UUID(items[2].id)][1] == before[uuid.UUID(items[2].id)][1] - 3
