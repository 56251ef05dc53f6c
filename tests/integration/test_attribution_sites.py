"""Pixels and site events through the attribution service: pixels, TrackSiteEvents
and StreamSiteEvents with a credential, every rejection reason, idempotency, order
dedupe, listing and tenant isolation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2 as tpb

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
from tests.campaign_support import create_sponsor, ts, usd
from tests.support import bearer, create_tenant, error_info, violated_fields

pytestmark = pytest.mark.stack


@pytest.fixture(scope="session")
async def attribution(stack: Stack) -> AsyncIterator[AttributionStub]:
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        yield attribution_pb2_grpc.AttributionServiceStub(channel)


@pytest.fixture
async def site(
    stack: Stack, tenants: TenantStub, campaigns: CampaignStub, attribution: AttributionStub
) -> Site:
    return await create_site(stack, tenants, campaigns, attribution)


async def track(
    attribution: AttributionStub, key: str, *events: pb.SiteEvent, origin: str = ""
) -> pb.TrackSiteEventsResponse:
    metadata = bearer(key) + ((("origin", origin),) if origin else ())
    response: pb.TrackSiteEventsResponse = await attribution.TrackSiteEvents(
        pb.TrackSiteEventsRequest(events=events), metadata=metadata
    )
    return response


async def listed(attribution: AttributionStub, key: str, **filters: object) -> list[pb.SiteEvent]:
    response = await attribution.ListSiteEvents(
        pb.ListSiteEventsRequest(page_size=200, **filters),  # type: ignore[arg-type]
        metadata=bearer(key),
    )
    return list(response.site_events)


# --- pixels ------------------------------------------------------------------------------


async def test_pixel_lifecycle(
    stack: Stack, tenants: TenantStub, campaigns: CampaignStub, attribution: AttributionStub
) -> None:
    site = await create_site(
        stack,
        tenants,
        campaigns,
        attribution,
        allowed_origins=("HTTPS://Shop.ACME.example:443/", "http://127.0.0.1:8000", SHOP),
    )
    pixel = site.pixel
    assert list(pixel.allowed_origins) == [SHOP, "http://127.0.0.1:8000"]
    assert pixel.state == pb.PIXEL_STATE_ACTIVE
    assert pixel.sponsor_id == site.sponsor_id
    # The snippet names the pixel and the gateway, and holds no secret.
    assert f'"{pixel.id}"' in pixel.snippet
    assert f'"{stack.gateway_url}/api/v1/siteEvents:track"' in pixel.snippet
    assert site.key not in pixel.snippet
    assert "cookie" not in pixel.snippet.lower()

    got = await attribution.GetPixel(
        pb.GetPixelRequest(pixel_id=pixel.id), metadata=bearer(site.key)
    )
    assert got.pixel == pixel
    second = await attribution.CreatePixel(
        pb.CreatePixelRequest(pixel=pb.Pixel(sponsor_id=site.sponsor_id, display_name="blog")),
        metadata=bearer(site.key),
    )
    # Without origins, the sponsor's domain and subdomains count: nothing to list.
    assert list(second.pixel.allowed_origins) == []
    first_page = await attribution.ListPixels(
        pb.ListPixelsRequest(page_size=1, sponsor_id=site.sponsor_id), metadata=bearer(site.key)
    )
    assert [p.id for p in first_page.pixels] == [pixel.id]
    second_page = await attribution.ListPixels(
        pb.ListPixelsRequest(
            page_size=1, sponsor_id=site.sponsor_id, page_token=first_page.next_page_token
        ),
        metadata=bearer(site.key),
    )
    assert [p.id for p in second_page.pixels] == [second.pixel.id]
    assert second_page.next_page_token == ""

    updated = await attribution.UpdatePixel(
        pb.UpdatePixelRequest(
            pixel=pb.Pixel(id=pixel.id, state=pb.PIXEL_STATE_DISABLED, display_name="ignored"),
            update_mask=FieldMask(paths=["state"]),
        ),
        metadata=bearer(site.key),
    )
    assert updated.pixel.state == pb.PIXEL_STATE_DISABLED
    assert updated.pixel.display_name == "shop"

    await attribution.DeletePixel(
        pb.DeletePixelRequest(pixel_id=pixel.id), metadata=bearer(site.key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await attribution.GetPixel(pb.GetPixelRequest(pixel_id=pixel.id), metadata=bearer(site.key))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND
    # A deleted pixel's events are refused.
    answer = await track(attribution, site.key, page_view(pixel.id), origin=SHOP)
    assert [r.reason for r in answer.rejections] == [pb.REJECTION_REASON_UNKNOWN_PIXEL]


async def test_pixels_of_foreign_sponsors_and_bad_origins_are_refused(
    site: Site,
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    attribution: AttributionStub,
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "attr")
    foreign_sponsor = await create_sponsor(campaigns, other.owner_key)
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await attribution.CreatePixel(
            pb.CreatePixelRequest(pixel=pb.Pixel(sponsor_id=foreign_sponsor.id)),
            metadata=bearer(site.key),
        )
    assert foreign.value.code() is grpc.StatusCode.NOT_FOUND
    assert error_info(foreign.value).reason == "SPONSOR_NOT_FOUND"

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await attribution.CreatePixel(
            pb.CreatePixelRequest(
                pixel=pb.Pixel(
                    sponsor_id=site.sponsor_id,
                    allowed_origins=[
                        "https://*.acme.example",
                        "ftp://acme.example",
                        "https://ok.example/path",
                    ],
                )
            ),
            metadata=bearer(site.key),
        )
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad.value) == [
        "pixel.allowed_origins[0]",
        "pixel.allowed_origins[1]",
        "pixel.allowed_origins[2]",
    ]
    # Another tenant sees none of this tenant's pixels.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await attribution.GetPixel(
            pb.GetPixelRequest(pixel_id=site.pixel.id), metadata=bearer(other.owner_key)
        )
    assert hidden.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_read_only_key_cannot_create_pixels_or_send_events(
    site: Site, tenants: TenantStub, attribution: AttributionStub
) -> None:
    created = await tenants.CreateApiKey(
        tpb.CreateApiKeyRequest(
            api_key=tpb.ApiKey(display_name="ro", scopes=[tpb.API_KEY_SCOPE_READ])
        ),
        metadata=bearer(site.key),
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await track(attribution, created.secret, page_view(site.pixel.id), origin=SHOP)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # A credential that is sent must be valid, even where none is needed.
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await track(attribution, "pk_not-a-key", page_view(site.pixel.id), origin=SHOP)
    assert invalid.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --- validation ----------------------------------------------------------------------------


async def test_every_rejection_reason_of_site_events(
    site: Site,
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    attribution: AttributionStub,
) -> None:
    pixel = site.pixel.id
    disabled = await attribution.CreatePixel(
        pb.CreatePixelRequest(
            pixel=pb.Pixel(sponsor_id=site.sponsor_id, state=pb.PIXEL_STATE_DISABLED)
        ),
        metadata=bearer(site.key),
    )
    foreign = await create_site(stack, tenants, campaigns, attribution)
    now = datetime.now(UTC)
    cases: list[tuple[pb.RejectionReason, pb.SiteEvent]] = [
        (pb.REJECTION_REASON_INVALID_ID, page_view(pixel, event_id="")),
        (pb.REJECTION_REASON_INVALID_ID, page_view(pixel, event_id="x" * 129)),
        (pb.REJECTION_REASON_INVALID_ID, page_view(pixel, event_id="a\0b")),
        (pb.REJECTION_REASON_MISSING_TYPE, pb.SiteEvent(id="t1", pixel_id=pixel)),
        (pb.REJECTION_REASON_MISSING_TYPE, pb.SiteEvent(id="t2", pixel_id=pixel, type=9)),  # type: ignore[arg-type]
        (
            pb.REJECTION_REASON_TIME_IN_FUTURE,
            page_view(pixel, event_time=ts(now + timedelta(minutes=6))),
        ),
        (
            pb.REJECTION_REASON_TIME_TOO_OLD,
            page_view(pixel, event_time=ts(now - timedelta(days=400))),
        ),
        (pb.REJECTION_REASON_MISSING_SOURCE, pb.SiteEvent(id="s1", type=pb.SITE_EVENT_TYPE_LEAD)),
        (pb.REJECTION_REASON_UNKNOWN_PIXEL, page_view(str(uuid.uuid4()))),
        (pb.REJECTION_REASON_UNKNOWN_PIXEL, page_view("not-a-uuid")),
        # Another tenant's pixel is no pixel of this one.
        (pb.REJECTION_REASON_UNKNOWN_PIXEL, page_view(foreign.pixel.id)),
        (pb.REJECTION_REASON_PIXEL_DISABLED, page_view(disabled.pixel.id)),
        (
            pb.REJECTION_REASON_UNKNOWN_SPONSOR,
            pb.SiteEvent(id="p1", type=pb.SITE_EVENT_TYPE_LEAD, sponsor_id=foreign.sponsor_id),
        ),
        (
            pb.REJECTION_REASON_UNKNOWN_SPONSOR,
            page_view(pixel, sponsor_id=foreign.sponsor_id),
        ),
        (pb.REJECTION_REASON_INVALID_CLIENT_IP, page_view(pixel, client_ip="300.1.2.3")),
        (pb.REJECTION_REASON_INVALID_CLIENT_IP, page_view(pixel, client_ip="9" * 5000)),
        (pb.REJECTION_REASON_INVALID_VALUE, page_view(pixel, value=usd(-1))),
        (pb.REJECTION_REASON_INVALID_VALUE, page_view(pixel, value=usd(100, "usd"))),
        (pb.REJECTION_REASON_INVALID_VALUE, page_view(pixel, value=usd(100, "US\0"))),
        (pb.REJECTION_REASON_FIELD_TOO_LONG, page_view(pixel, url="https://x/" + "a" * 2048)),
        (pb.REJECTION_REASON_FIELD_TOO_LONG, page_view(pixel, promo_code="P" * 3000)),
        (pb.REJECTION_REASON_INVALID_TEXT, page_view(pixel, referrer="https://x/\0")),
        (pb.REJECTION_REASON_INVALID_TEXT, page_view(pixel, user_agent="bot\0")),
    ]
    good = page_view(pixel, client_ip="192.0.2.7")
    answer = await track(attribution, site.key, *(event for _, event in cases), good, origin=SHOP)
    assert [(r.index, r.reason) for r in answer.rejections] == [
        (index, reason) for index, (reason, _) in enumerate(cases)
    ]
    assert all(r.message for r in answer.rejections)
    assert answer.accepted_count == 1
    # The page's origin is checked whenever a browser sends one.
    foreign_origin = await track(
        attribution, site.key, page_view(pixel), origin="https://evil.example"
    )
    assert [r.reason for r in foreign_origin.rejections] == [pb.REJECTION_REASON_ORIGIN_NOT_ALLOWED]
    stored = await listed(attribution, site.key)
    assert [e.id for e in stored] == [good.id]
    assert stored[0].household_id == household(stack, site.tenant_id, "192.0.2.7")


async def test_batch_sizes_are_bounded(site: Site, attribution: AttributionStub) -> None:
    for events, reason in (
        ([], "BATCH_EMPTY"),
        ([page_view(site.pixel.id)] * 501, "BATCH_TOO_LARGE"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await track(attribution, site.key, *events, origin=SHOP)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(refused.value).reason == reason


async def test_resends_and_repeated_orders_are_duplicates(
    site: Site, attribution: AttributionStub
) -> None:
    pixel = site.pixel.id

    def purchase(event_id: str, order_id: str, minor: int = 4999) -> pb.SiteEvent:
        return pb.SiteEvent(
            id=event_id,
            type=pb.SITE_EVENT_TYPE_PURCHASE,
            sponsor_id=site.sponsor_id,
            client_ip="198.51.100.4",
            value=usd(minor),
            order_id=order_id,
            promo_code="PODCAST20",
        )

    first = await track(
        attribution,
        site.key,
        page_view(pixel, event_id="view-1", client_ip="198.51.100.4"),
        purchase("buy-1", "order-1"),
        # The same order again, under a new event id (a reloaded thank-you page).
        purchase("buy-2", "order-1"),
        purchase("buy-1", "order-9"),
    )
    assert (first.accepted_count, first.duplicate_count, list(first.rejections)) == (2, 2, [])
    again = await track(
        attribution,
        site.key,
        page_view(pixel, event_id="view-1", client_ip="198.51.100.4"),
        purchase("buy-1", "order-1"),
        purchase("buy-3", "order-1"),
        purchase("buy-4", "order-2", 1000),
    )
    assert (again.accepted_count, again.duplicate_count) == (1, 3)
    purchases = await listed(attribution, site.key, types=[pb.SITE_EVENT_TYPE_PURCHASE])
    assert sorted((e.id, e.order_id, e.value.minor_units) for e in purchases) == [
        ("buy-1", "order-1", 4999),
        ("buy-4", "order-2", 1000),
    ]
    assert {e.promo_code for e in purchases} == {"PODCAST20"}


async def test_stream_acknowledges_each_batch_and_resends_are_idempotent(
    site: Site, attribution: AttributionStub
) -> None:
    batches = [
        [
            page_view(site.pixel.id, event_id=f"s{b}-{i}", client_ip="203.0.113.9")
            for i in range(300)
        ]
        for b in range(3)
    ]

    async def send(sequences: list[int]) -> list[pb.StreamSiteEventsResponse]:
        async def requests() -> AsyncIterator[pb.StreamSiteEventsRequest]:
            for sequence in sequences:
                yield pb.StreamSiteEventsRequest(sequence=sequence, events=batches[sequence])

        return [
            ack async for ack in attribution.StreamSiteEvents(requests(), metadata=bearer(site.key))
        ]

    acks = await send([0, 1])
    assert [(a.sequence, a.accepted_count, a.duplicate_count) for a in acks] == [
        (0, 300, 0),
        (1, 300, 0),
    ]
    # After a reconnect the unacknowledged and the acknowledged batches come again.
    acks = await send([1, 2])
    assert [(a.sequence, a.accepted_count, a.duplicate_count) for a in acks] == [
        (1, 0, 300),
        (2, 300, 0),
    ]


async def test_an_oversized_stream_batch_ends_the_stream_after_the_batches_before(
    site: Site, attribution: AttributionStub
) -> None:
    async def requests() -> AsyncIterator[pb.StreamSiteEventsRequest]:
        yield pb.StreamSiteEventsRequest(sequence=1, events=[page_view(site.pixel.id)])
        yield pb.StreamSiteEventsRequest(
            sequence=2, events=[page_view(site.pixel.id, event_id=f"e{i}") for i in range(5001)]
        )

    acks: list[int] = []

    async def receive() -> None:
        async for ack in attribution.StreamSiteEvents(requests(), metadata=bearer(site.key)):
            acks.append(ack.sequence)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await receive()
    assert acks == [1]
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "BATCH_TOO_LARGE"


# --- listing and isolation ------------------------------------------------------------------


async def test_list_site_events_newest_first_with_filters_and_pages(
    site: Site,
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    attribution: AttributionStub,
) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    events = [
        page_view(site.pixel.id, event_id=f"v{i}", event_time=ts(base + timedelta(minutes=i)))
        for i in range(5)
    ]
    events.append(
        pb.SiteEvent(
            id="lead-1",
            type=pb.SITE_EVENT_TYPE_LEAD,
            pixel_id=site.pixel.id,
            event_time=ts(base + timedelta(minutes=10)),
        )
    )
    answer = await track(attribution, site.key, *events)
    assert answer.accepted_count == 6
    seen: list[str] = []
    token = ""
    while True:
        page = await attribution.ListSiteEvents(
            pb.ListSiteEventsRequest(page_size=2, page_token=token), metadata=bearer(site.key)
        )
        seen += [e.id for e in page.site_events]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["lead-1", "v4", "v3", "v2", "v1", "v0"]
    leads = await listed(attribution, site.key, types=[pb.SITE_EVENT_TYPE_LEAD])
    assert [e.id for e in leads] == ["lead-1"]
    assert leads[0].pixel_id == site.pixel.id
    assert leads[0].sponsor_id == site.sponsor_id
    window = await listed(
        attribution,
        site.key,
        start_time=ts(base + timedelta(minutes=1)),
        end_time=ts(base + timedelta(minutes=3)),
    )
    assert [e.id for e in window] == ["v2", "v1"]
    # last_event_time follows the events, without one update per event.
    pixel = await attribution.GetPixel(
        pb.GetPixelRequest(pixel_id=site.pixel.id), metadata=bearer(site.key)
    )
    assert pixel.pixel.HasField("last_event_time")
    assert pixel.pixel.last_event_time.ToDatetime(UTC) > base + timedelta(hours=2)

    other = await create_site(stack, tenants, campaigns, attribution)
    assert await listed(attribution, other.key) == []
    # A page token is the tenant's own.
    first = await attribution.ListSiteEvents(
        pb.ListSiteEventsRequest(page_size=1), metadata=bearer(site.key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as stolen:
        await attribution.ListSiteEvents(
            pb.ListSiteEventsRequest(page_size=1, page_token=first.next_page_token),
            metadata=bearer(other.key),
        )
    assert stolen.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_site_events_are_invisible_to_other_tenants_in_the_database(
    site: Site, stack: Stack
) -> None:
    event = page_view(site.pixel.id, client_ip="192.0.2.44")
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        stub = attribution_pb2_grpc.AttributionServiceStub(channel)
        assert (await track(stub, site.key, event)).accepted_count == 1
    conn = await asyncpg.connect(stack.app_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(uuid.uuid4()))
            assert await conn.fetchval("SELECT count(*) FROM site_events") == 0
            assert await conn.fetchval("SELECT count(*) FROM pixels") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", site.tenant_id)
            assert await conn.fetchval("SELECT count(*) FROM site_events") == 1
    finally:
        await conn.close()
