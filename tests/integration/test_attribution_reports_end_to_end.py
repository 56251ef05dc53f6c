"""From a podcast feed to a campaign report, all through Envoy.

A feed is imported and its mid-roll booked for a CPM line item; analytics ingests
listener requests from four households: three download the whole episode (the ad is
delivered), one stops before the ad's bytes. The sponsor's pixel then fires from the
households' own addresses (the test's client binds 127.0.0.x, the address Envoy
forwards): a page view and a purchase from one exposed household, a lead from another,
a purchase from the household the ad never reached, and a page view from a foreign
origin, which is rejected with its reason. The report's impressions are analytics' ads
delivered (as pacing reports them), and its conversions are the ones above.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.attribution_exposures_support import (
    booked_slot,
    drained,
    flight_start_yesterday,
    ingest,
    whole_downloads,
)
from tests.campaign_support import AD_START, LISTENER_AGENT, MEDIA_BYTES, ts
from tests.catalog.support import FeedServer
from tests.support import create_tenant

SHOP = "https://shop.acme.example"
TRACK = "/api/v1/siteEvents:track"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) EndToEnd/1.0"
EXPOSED = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
NOT_DELIVERED = "127.0.0.5"


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def browsers(stack: Stack) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One HTTP client per household, each connecting from its own loopback address."""
    clients = {
        ip: httpx.AsyncClient(
            base_url=stack.gateway_url,
            timeout=10,
            transport=httpx.AsyncHTTPTransport(local_address=ip),
        )
        for ip in [*EXPOSED, NOT_DELIVERED]
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


async def fire(browser: httpx.AsyncClient, origin: str, *events: dict[str, Any]) -> dict[str, Any]:
    response = await browser.post(
        TRACK,
        content=json.dumps({"events": list(events)}),
        headers={
            "content-type": "text/plain;charset=UTF-8",
            "origin": origin,
            "user-agent": BROWSER,
        },
    )
    return ok(response)  # type: ignore[no-any-return]


async def test_feed_to_report_through_envoy(
    stack: Stack,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
    feeds: FeedServer,
    owner_conn: asyncpg.Connection,
    browsers: dict[str, httpx.AsyncClient],
) -> None:
    tenants = tenant_pb2_grpc.TenantServiceStub(gateway_channel)
    tenant = await create_tenant(tenants, stack.admin_token, "e2e")
    booked = await booked_slot(
        catalog_pb2_grpc.CatalogServiceStub(gateway_channel),
        campaign_pb2_grpc.CampaignServiceStub(gateway_channel),
        feeds,
        tenant,
        flight_start_yesterday(),
    )
    auth = {"authorization": f"Bearer {tenant.owner_key}"}
    campaign_id = booked.line_item.campaign_id
    campaign = ok(await http.get(f"/api/v1/campaigns/{campaign_id}", headers=auth))["campaign"]
    pixel = ok(
        await http.post(
            "/api/v1/pixels",
            json={"pixel": {"sponsorId": campaign["sponsorId"], "allowedOrigins": [SHOP]}},
            headers=auth,
        )
    )["pixel"]

    heard = datetime.now(UTC) - timedelta(hours=2)
    requests = whole_downloads(booked.episode.id, heard, EXPOSED)
    requests.append(
        apb.ListenerRequest(
            id=str(uuid.uuid4()),
            request_time=ts(heard),
            episode_id=booked.episode.id,
            client_ip=NOT_DELIVERED,
            user_agent=LISTENER_AGENT,
            http_method="GET",
            status_code=206,
            range="bytes=0-",
            bytes_served=AD_START + 10,
        )
    )
    assert MEDIA_BYTES > AD_START
    await ingest(
        analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel), tenant.owner_key, requests
    )
    await drained(owner_conn, tenant.id)

    first, second, _ = EXPOSED
    pixel_id = pixel["id"]
    answer = await fire(
        browsers[first],
        SHOP,
        {"id": "view-1", "type": "SITE_EVENT_TYPE_PAGE_VIEW", "pixelId": pixel_id},
        {
            "id": "buy-1",
            "type": "SITE_EVENT_TYPE_PURCHASE",
            "pixelId": pixel_id,
            "orderId": "order-1",
            "value": {"currencyCode": "USD", "minorUnits": "4999"},
        },
    )
    assert answer["acceptedCount"] == 2
    lead = {"id": "lead-2", "type": "SITE_EVENT_TYPE_LEAD", "pixelId": pixel_id}
    assert (await fire(browsers[second], SHOP, lead))["acceptedCount"] == 1
    unreached = await fire(
        browsers[NOT_DELIVERED],
        SHOP,
        {
            "id": "buy-5",
            "type": "SITE_EVENT_TYPE_PURCHASE",
            "pixelId": pixel_id,
            "orderId": "order-5",
            "value": {"currencyCode": "USD", "minorUnits": "1500"},
        },
    )
    assert unreached["acceptedCount"] == 1
    foreign = await fire(
        browsers[first],
        "https://evil.example",
        {"id": "view-evil", "type": "SITE_EVENT_TYPE_PAGE_VIEW", "pixelId": pixel_id},
    )
    assert foreign.get("acceptedCount", 0) == 0
    (rejection,) = foreign["rejections"]
    assert rejection["reason"] == "REJECTION_REASON_ORIGIN_NOT_ALLOWED"
    assert rejection["eventId"] == "view-evil"

    pacing = ok(await http.get(f"/api/v1/campaigns/{campaign_id}/pacing", headers=auth))["pacing"]
    delivered = int(pacing["deliveredImpressions"])
    assert delivered == len(EXPOSED)
    report = ok(
        await http.get(
            f"/api/v1/campaigns/{campaign_id}/report",
            params={"breakdown": "REPORT_BREAKDOWN_LINE_ITEM"},
            headers=auth,
        )
    )["campaignReport"]
    totals = report["totals"]
    assert int(totals["impressions"]) == delivered
    assert int(totals["householdsReached"]) == len(EXPOSED)
    assert totals["visitors"] == 1
    assert totals["leads"] == 1
    assert totals["purchases"] == 1
    assert totals["revenue"] == {"currencyCode": "USD", "minorUnits": "4999"}
    assert totals["spend"] == pacing["spend"]
    assert report["model"] == "ATTRIBUTION_MODEL_LAST_TOUCH"
    unattributed = report["unattributed"]
    assert int(unattributed["purchases"]) == 1
    assert unattributed["revenue"]["minorUnits"] == "1500"
    (row,) = report["rows"]
    assert row["dimensionValue"] == booked.line_item.id
    assert row["metrics"]["purchases"] == 1

    # The report is cached now; a site event stored afterwards changes the version it
    # was cached under, so the next report counts it.
    third = EXPOSED[2]
    late = {"id": "lead-3", "type": "SITE_EVENT_TYPE_LEAD", "pixelId": pixel_id}
    assert (await fire(browsers[third], SHOP, late))["acceptedCount"] == 1
    again = ok(
        await http.get(
            f"/api/v1/campaigns/{campaign_id}/report",
            params={"breakdown": "REPORT_BREAKDOWN_LINE_ITEM"},
            headers=auth,
        )
    )["campaignReport"]
    assert again["totals"]["leads"] == 2

    conversions = ok(await http.get(f"/api/v1/campaigns/{campaign_id}/conversions", headers=auth))[
        "conversions"
    ]
    assert [c["siteEventId"] for c in conversions] == ["lead-3", "lead-2", "buy-1"]
    (touch,) = conversions[2]["touchpoints"]
    assert touch["lineItemId"] == booked.line_item.id
    assert touch["credit"] == 1
    assert touch["creditedValue"]["minorUnits"] == "4999"
