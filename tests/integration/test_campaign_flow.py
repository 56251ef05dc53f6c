"""Sponsor to pacing, end to end: an imported episode's ad slot booked for a CPM line
item, listener requests ingested through analytics that deliver the ad's bytes (and
some that do not), and GetPacing reporting exactly the IAB ads-delivered count, the
expected impressions and the spend. As JSON through Envoy, and as native gRPC through
Envoy with a second tenant that sees none of it."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    AD_END,
    AD_START,
    GOAL,
    RATE,
    CatalogStub,
    day_floor,
    imported_episode,
    listener_requests,
    ts,
    usd,
)
from tests.catalog.support import FeedServer
from tests.support import TenantHandle, bearer, create_tenant


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def half_even(numerator: int, denominator: int) -> int:
    return int((Decimal(numerator) / Decimal(denominator)).quantize(0, ROUND_HALF_EVEN))


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "flow")


async def test_sponsor_to_pacing_as_json(
    http: httpx.AsyncClient, catalog: CatalogStub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    headers = {"authorization": f"Bearer {tenant.owner_key}"}
    episode = await imported_episode(catalog, feeds, tenant)
    now = datetime.now(UTC)
    start = day_floor(now) - timedelta(days=3)
    end = start + timedelta(days=30)

    sponsor = ok(
        await http.post(
            "/api/v1/sponsors",
            json={"sponsor": {"displayName": "Acme Meals", "competitiveCategory": "meal kits"}},
            headers=headers,
        )
    )["sponsor"]
    campaign = ok(
        await http.post(
            "/api/v1/campaigns",
            json={
                "campaign": {
                    "sponsorId": sponsor["id"],
                    "displayName": "Spring push",
                    "budget": {"currencyCode": "USD", "minorUnits": "1000000"},
                    "flightStartTime": start.isoformat().replace("+00:00", "Z"),
                    "flightEndTime": end.isoformat().replace("+00:00", "Z"),
                }
            },
            headers=headers,
        )
    )["campaign"]
    assert campaign["state"] == "CAMPAIGN_STATE_DRAFT"
    item = ok(
        await http.post(
            "/api/v1/lineItems",
            json={
                "lineItem": {
                    "campaignId": campaign["id"],
                    "displayName": "Mid-rolls",
                    "adType": "AD_TYPE_DYNAMIC",
                    "pricingModel": "PRICING_MODEL_CPM",
                    "rate": {"currencyCode": "USD", "minorUnits": str(RATE)},
                    "impressionGoal": str(GOAL),
                }
            },
            headers=headers,
        )
    )["lineItem"]
    placement = ok(
        await http.post(
            f"/api/v1/lineItems/{item['id']}:book",
            json={
                "episodeId": episode.id,
                "adSlotId": episode.ad_slots[0].id,
                "impressionGoal": str(GOAL),
                "requestId": "io-123-mid",
            },
            headers=headers,
        )
    )["placement"]
    assert placement["state"] == "PLACEMENT_STATE_BOOKED"
    assert (placement["startByte"], placement["endByte"]) == (str(AD_START), str(AD_END))
    for path, body in (
        (f"/api/v1/campaigns/{campaign['id']}", {"state": "CAMPAIGN_STATE_ACTIVE"}),
        (f"/api/v1/lineItems/{item['id']}", {"state": "LINE_ITEM_STATE_ACTIVE"}),
    ):
        ok(await http.patch(path, json=body, params={"updateMask": "state"}, headers=headers))

    yesterday = day_floor(now) - timedelta(hours=12)
    today = day_floor(now) + (now - day_floor(now)) / 2
    for when, listeners in ((yesterday, 5), (today, 4)):
        body = json_format.MessageToDict(
            apb.IngestListenerEventsRequest(requests=listener_requests(episode.id, when, listeners))
        )
        ingested = ok(await http.post("/api/v1/listenerEvents:ingest", json=body, headers=headers))
        assert ingested["acceptedCount"] == listeners + 3

    pacing = ok(await http.get(f"/api/v1/lineItems/{item['id']}/pacing", headers=headers))["pacing"]
    assert pacing["lineItemId"] == item["id"]
    assert pacing["deliveredImpressions"] == "9"
    elapsed = pacing["flightElapsedFraction"]
    as_of = datetime.fromisoformat(pacing["asOfTime"].replace("Z", "+00:00"))
    assert elapsed == pytest.approx((as_of - start) / (end - start))
    assert int(pacing["expectedImpressions"]) == round(GOAL * elapsed)
    assert pacing["paceRatio"] == pytest.approx(9 / int(pacing["expectedImpressions"]))
    assert pacing["status"] == "PACING_STATUS_UNDER_DELIVERING"
    # 9 impressions at USD 25.00 CPM: 22.5 cents, rounded half to even.
    assert pacing["spend"] == {"currencyCode": "USD", "minorUnits": str(half_even(9 * RATE, 1000))}
    assert pacing["spend"]["minorUnits"] == "22"
    days = {
        d["dayStartTime"]: int(d.get("deliveredImpressions", "0"))
        for d in pacing["dailyDeliveries"]
    }
    assert len(days) == 4
    assert days[day_floor(yesterday).isoformat().replace("+00:00", "Z")] == 5
    assert days[day_floor(now).isoformat().replace("+00:00", "Z")] == 4
    assert int(pacing["projectedImpressions"]) > 9

    # What pacing read, asked of analytics directly: per slot, and per group of slots.
    span = {
        "adSlotId": episode.ad_slots[0].id,
        "episodeId": episode.id,
        "startTime": rfc3339(start),
        "endTime": rfc3339(end),
    }
    counted = ok(
        await http.post(
            "/api/v1/adDeliveries:count",
            json={"ranges": [span, {**span, "groupKey": "g"}, {**span, "groupKey": "g"}]},
            headers=headers,
        )
    )
    alone, *grouped = counted["ranges"]
    assert alone["adsDelivered"] == "9"
    assert [int(d["adsDelivered"]) for d in alone["days"]] == [5, 4]
    assert [(r["adsDelivered"], r.get("days", [])) for r in grouped] == [("9", []), ("9", [])]
    assert counted["groups"][0]["groupKey"] == "g"
    assert [int(d["adsDelivered"]) for d in counted["groups"][0]["days"]] == [10, 8]

    whole = ok(await http.get(f"/api/v1/campaigns/{campaign['id']}/pacing", headers=headers))
    assert whole["pacing"]["deliveredImpressions"] == "9"
    assert whole["pacing"].get("lineItemId", "") == ""
    assert [p["lineItemId"] for p in whole["lineItemPacings"]] == [item["id"]]
    assert whole["pacing"]["spend"] == pacing["spend"]


async def test_native_grpc_flow_and_a_second_tenant(
    gateway_channel: grpc.aio.Channel,
    catalog: CatalogStub,
    feeds: FeedServer,
    tenant: TenantHandle,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    stub = campaign_pb2_grpc.CampaignServiceStub(gateway_channel)
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    key = bearer(tenant.owner_key)
    episode = await imported_episode(catalog, feeds, tenant)
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    sponsor = (
        await stub.CreateSponsor(
            pb.CreateSponsorRequest(sponsor=pb.Sponsor(display_name="Acme")), metadata=key
        )
    ).sponsor
    campaign = (
        await stub.CreateCampaign(
            pb.CreateCampaignRequest(
                campaign=pb.Campaign(
                    sponsor_id=sponsor.id,
                    display_name="Launch",
                    budget=usd(90_000, "EUR"),
                    flight_start_time=ts(start),
                    flight_end_time=ts(start + timedelta(days=10)),
                )
            ),
            metadata=key,
        )
    ).campaign
    item = (
        await stub.CreateLineItem(
            pb.CreateLineItemRequest(
                line_item=pb.LineItem(
                    campaign_id=campaign.id,
                    display_name="Host reads",
                    ad_type=pb.AD_TYPE_DYNAMIC,
                    pricing_model=pb.PRICING_MODEL_CPM,
                    rate=usd(RATE, "EUR"),
                    impression_goal=GOAL,
                    pacing_strategy=pb.PACING_STRATEGY_FRONT_LOADED,
                )
            ),
            metadata=key,
        )
    ).line_item
    placement = (
        await stub.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=item.id, episode_id=episode.id, position=kpb.AD_POSITION_MID_ROLL
            ),
            metadata=key,
        )
    ).placement
    deal = (
        await stub.CreateDeal(
            pb.CreateDealRequest(
                deal=pb.Deal(
                    display_name="Launch deal", sponsor_id=sponsor.id, campaign_id=campaign.id
                )
            ),
            metadata=key,
        )
    ).deal
    await analytics.IngestListenerEvents(
        apb.IngestListenerEventsRequest(
            requests=listener_requests(episode.id, now - timedelta(minutes=5), 6)
        ),
        metadata=key,
    )
    pacing = (await stub.GetPacing(pb.GetPacingRequest(line_item_id=item.id), metadata=key)).pacing
    assert pacing.delivered_impressions == 6
    # Front-loaded: 4/3 of the even share early in the flight.
    assert pacing.expected_impressions == round(GOAL * pacing.flight_elapsed_fraction * 4 / 3)
    assert pacing.spend.currency_code == "EUR"
    assert pacing.spend.minor_units == half_even(6 * RATE, 1000)

    other = bearer((await create_tenant(tenants, stack.admin_token, "flow")).owner_key)
    hidden: list[Awaitable[Any]] = [
        stub.GetSponsor(pb.GetSponsorRequest(sponsor_id=sponsor.id), metadata=other),
        stub.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign.id), metadata=other),
        stub.GetLineItem(pb.GetLineItemRequest(line_item_id=item.id), metadata=other),
        stub.GetPlacement(pb.GetPlacementRequest(placement_id=placement.id), metadata=other),
        stub.GetDeal(pb.GetDealRequest(deal_id=deal.id), metadata=other),
        stub.ListDealEvents(pb.ListDealEventsRequest(deal_id=deal.id), metadata=other),
        stub.GetPacing(pb.GetPacingRequest(line_item_id=item.id), metadata=other),
        stub.GetPacing(pb.GetPacingRequest(campaign_id=campaign.id), metadata=other),
        stub.MatchPodcasts(pb.MatchPodcastsRequest(campaign_id=campaign.id), metadata=other),
        stub.DeletePlacement(pb.DeletePlacementRequest(placement_id=placement.id), metadata=other),
        stub.DeleteCampaign(pb.DeleteCampaignRequest(campaign_id=campaign.id), metadata=other),
        stub.TransitionDeal(
            pb.TransitionDealRequest(deal_id=deal.id, stage=pb.DEAL_STAGE_PROPOSAL), metadata=other
        ),
        stub.UpdateSponsor(
            pb.UpdateSponsorRequest(
                sponsor=pb.Sponsor(id=sponsor.id, display_name="x"),
                update_mask=FieldMask(paths=["display_name"]),
            ),
            metadata=other,
        ),
        stub.BookPlacement(
            pb.BookPlacementRequest(
                line_item_id=item.id, episode_id=episode.id, position=kpb.AD_POSITION_MID_ROLL
            ),
            metadata=other,
        ),
    ]
    for call in hidden:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # The first tenant's resources are untouched.
    still = await stub.GetPlacement(pb.GetPlacementRequest(placement_id=placement.id), metadata=key)
    assert still.placement.state == pb.PLACEMENT_STATE_BOOKED
