"""The pixel's calls through Envoy, as a browser makes them: JSON without a
credential, the client address Envoy forwards (never one the browser writes), the
pixel's allowed origins, CORS, and the rate limit per pixel and client."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc

from devstack.stack import Stack
from tests.attribution_sites_support import (
    SHOP,
    AttributionStub,
    CampaignStub,
    Site,
    TenantStub,
    create_site,
    household,
    page_view,
)
from tests.support import bearer, rich_status

pytestmark = pytest.mark.stack

TRACK = "/api/v1/siteEvents:track"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) PixelTest/1.0"


@pytest.fixture(scope="session")
async def attribution(stack: Stack) -> AsyncIterator[AttributionStub]:
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        yield attribution_pb2_grpc.AttributionServiceStub(channel)


@pytest.fixture(scope="session")
async def gateway_attribution(stack: Stack) -> AsyncIterator[AttributionStub]:
    async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
        yield attribution_pb2_grpc.AttributionServiceStub(channel)


@pytest.fixture
async def site(
    stack: Stack, tenants: TenantStub, campaigns: CampaignStub, attribution: AttributionStub
) -> Site:
    return await create_site(stack, tenants, campaigns, attribution)


def event(pixel_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "SITE_EVENT_TYPE_PAGE_VIEW",
        "pixelId": pixel_id,
    } | fields


async def post(
    http: httpx.AsyncClient,
    *events: dict[str, Any],
    origin: str | None = SHOP,
    headers: dict[str, str] | None = None,
    content_type: str = "text/plain;charset=UTF-8",
) -> httpx.Response:
    sent = {"content-type": content_type, "user-agent": BROWSER} | (headers or {})
    if origin is not None:
        sent["origin"] = origin
    return await http.post(TRACK, content=json.dumps({"events": list(events)}), headers=sent)


async def stored(attribution: AttributionStub, site: Site) -> list[pb.SiteEvent]:
    response = await attribution.ListSiteEvents(
        pb.ListSiteEventsRequest(page_size=200), metadata=bearer(site.key)
    )
    return list(response.site_events)


async def test_a_pixel_call_without_credentials_is_stored_with_the_connection_address(
    site: Site, stack: Stack, http: httpx.AsyncClient, attribution: AttributionStub
) -> None:
    sent = event(site.pixel.id, url="https://shop.acme.example/checkout")
    # A browser can write any X-Forwarded-For, and a page any client_ip: neither counts.
    forged = event(site.pixel.id, clientIp="203.0.113.77")
    response = await post(
        http,
        sent,
        forged,
        headers={"x-forwarded-for": "198.51.100.66", "x-envoy-external-address": "198.51.100.67"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"acceptedCount": 2, "duplicateCount": 0, "rejections": []}
    # Any page may read the answer: the service checked its origin.
    assert response.headers["access-control-allow-origin"] == SHOP
    events = await stored(attribution, site)
    assert {e.id for e in events} == {sent["id"], forged["id"]}
    loopback = household(stack, site.tenant_id, "127.0.0.1")
    assert {e.household_id for e in events} == {loopback}
    assert {e.user_agent for e in events} == {BROWSER}
    # application/json works as well (from pages that send it, after a preflight).
    resent = await post(http, sent, content_type="application/json")
    assert resent.json()["duplicateCount"] == 1


async def test_the_pixels_origins_decide_and_are_never_bypassed_without_a_credential(
    site: Site,
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    http: httpx.AsyncClient,
    attribution: AttributionStub,
) -> None:
    for origin in ("https://evil.example", "http://shop.acme.example", "null", "", None):
        response = await post(http, event(site.pixel.id), origin=origin)
        assert response.status_code == 200, response.text
        assert [r["reason"] for r in response.json()["rejections"]] == [
            "REJECTION_REASON_ORIGIN_NOT_ALLOWED"
        ], origin
    # Without a credential an event must name a pixel: a sponsor id alone proves nothing.
    by_sponsor = {"id": "x1", "type": "SITE_EVENT_TYPE_LEAD", "sponsorId": site.sponsor_id}
    unknown = event(str(uuid.uuid4()))
    response = await post(http, by_sponsor, unknown, event(site.pixel.id))
    assert [r["reason"] for r in response.json()["rejections"]] == [
        "REJECTION_REASON_MISSING_SOURCE",
        "REJECTION_REASON_UNKNOWN_PIXEL",
    ]
    assert response.json()["acceptedCount"] == 1
    # A call naming no known pixel has no tenant: everything is rejected, nothing stored.
    nobody = await post(http, event(str(uuid.uuid4())))
    assert nobody.json()["acceptedCount"] == 0
    assert [r["reason"] for r in nobody.json()["rejections"]] == ["REJECTION_REASON_UNKNOWN_PIXEL"]
    assert len(await stored(attribution, site)) == 1

    # A pixel without origins takes its sponsor's domain and subdomains, over https.
    default = await create_site(stack, tenants, campaigns, attribution, allowed_origins=())
    for origin, accepted in (
        ("https://acme.example", 1),
        ("https://www.acme.example", 1),
        ("http://www.acme.example", 0),
        ("https://evilacme.example", 0),
        ("https://acme.example.evil.example", 0),
    ):
        response = await post(http, event(default.pixel.id), origin=origin)
        assert response.json()["acceptedCount"] == accepted, origin

    # A disabled pixel's events are refused.
    from google.protobuf.field_mask_pb2 import FieldMask

    await attribution.UpdatePixel(
        pb.UpdatePixelRequest(
            pixel=pb.Pixel(id=site.pixel.id, state=pb.PIXEL_STATE_DISABLED),
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(site.key),
    )
    response = await post(http, event(site.pixel.id))
    assert [r["reason"] for r in response.json()["rejections"]] == [
        "REJECTION_REASON_PIXEL_DISABLED"
    ]


async def test_other_site_methods_still_need_a_credential(
    site: Site, http: httpx.AsyncClient
) -> None:
    response = await http.get("/api/v1/siteEvents", headers={"origin": SHOP})
    assert response.status_code == 401
    response = await http.get(f"/api/v1/pixels/{site.pixel.id}")
    assert response.status_code == 401


async def test_preflights_of_the_track_path_are_answered_for_any_page(
    http: httpx.AsyncClient,
) -> None:
    for origin in (SHOP, "https://another-shop.example"):
        response = await http.options(
            TRACK,
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "POST" in response.headers["access-control-allow-methods"]
        # No credentials travel with pixel calls.
        assert "access-control-allow-credentials" not in response.headers
    # The rest of the API keeps the gateway's own CORS list.
    other = await http.options(
        "/api/v1/siteEvents",
        headers={"origin": "https://another-shop.example", "access-control-request-method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers


async def test_bad_bodies_never_fail_inside(site: Site, http: httpx.AsyncClient) -> None:
    nul = await post(http, event(site.pixel.id, url="https://shop.acme.example/\u0000"))
    assert [r["reason"] for r in nul.json()["rejections"]] == ["REJECTION_REASON_INVALID_TEXT"]
    huge = await post(http, event(site.pixel.id, referrer="r" * 1_000_000))
    assert [r["reason"] for r in huge.json()["rejections"]] == ["REJECTION_REASON_FIELD_TOO_LONG"]
    nul_id = await post(http, event(site.pixel.id, id="a\u0000"))
    assert [r["reason"] for r in nul_id.json()["rejections"]] == ["REJECTION_REASON_INVALID_ID"]
    too_big = await post(http, event(site.pixel.id, url="u" * (5 * 1024 * 1024)))
    assert too_big.status_code == 413
    unknown_type = await post(http, event(site.pixel.id, type=17))
    assert [r["reason"] for r in unknown_type.json()["rejections"]] == [
        "REJECTION_REASON_MISSING_TYPE"
    ]
    for body in ("not json", '{"events": "x"}', '{"evnts": []}'):
        response = await http.post(
            TRACK, content=body, headers={"content-type": "text/plain", "origin": SHOP}
        )
        assert response.status_code == 400, body


async def test_pixel_calls_are_rate_limited_per_pixel_and_client(
    site: Site, gateway_attribution: AttributionStub
) -> None:
    accepted = 0
    refused: grpc.aio.AioRpcError | None = None
    for _ in range(200):
        try:
            await gateway_attribution.TrackSiteEvents(
                pb.TrackSiteEventsRequest(events=[page_view(site.pixel.id)]),
                metadata=(("origin", SHOP),),
            )
        except grpc.aio.AioRpcError as error:
            refused = error
            break
        accepted += 1
    # A burst of a minute's allowance (120) passes, then the pixel must wait.
    assert accepted >= 100
    assert refused is not None
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(refused).details)
    assert retry.retry_delay.ToNanoseconds() > 0
    # The same pixel with a credential (a server relaying events) is not limited so.
    with_key = await gateway_attribution.TrackSiteEvents(
        pb.TrackSiteEventsRequest(events=[page_view(site.pixel.id)]),
        metadata=(*bearer(site.key), ("origin", SHOP)),
    )
    assert with_key.accepted_count == 1
