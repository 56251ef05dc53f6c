"""IngestExposures (third-party exposures) and ListExposures, through Envoy: every
rejection reason that applies, one record at a time; oversized and empty batches;
idempotent resends; the JSON route; filters, newest-first paging and page tokens; and
row-level security on the exposure tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.client_ip import IpHasher
from tests.analytics_ingest_support import api_key
from tests.attribution_exposures_support import Booked, booked_slot, flight_start_yesterday
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_line_item,
    create_sponsor,
    ts,
)
from tests.catalog.support import FeedServer
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

Reason = pb.RejectionReason


@pytest.fixture
def attribution(
    gateway_channel: grpc.aio.Channel,
) -> attribution_pb2_grpc.AttributionServiceAsyncStub:
    return attribution_pb2_grpc.AttributionServiceStub(gateway_channel)


@pytest.fixture
async def booked(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
) -> Booked:
    tenant = await create_tenant(tenants, stack.admin_token, "ingexp")
    return await booked_slot(catalog, campaigns, feeds, tenant, flight_start_yesterday())


@pytest.fixture
async def other(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "ingother")


def exposure(booked: Booked, n: int, when: datetime | None, **fields: Any) -> pb.Exposure:
    values: dict[str, Any] = {
        "id": f"adserver-{n}",
        "line_item_id": booked.line_item.id,
        "client_ip": f"192.0.2.{n + 1}",
        "country_code": "us",
    }
    values.update(fields)
    out = pb.Exposure(**values)
    if when is not None:
        out.exposure_time.CopyFrom(ts(when))
    return out


async def test_each_record_is_checked_alone_and_resends_are_duplicates(
    booked: Booked,
    other: TenantHandle,
    campaigns: CampaignStub,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    stack: Stack,
) -> None:
    sponsor = await create_sponsor(campaigns, other.owner_key)
    campaign = await create_campaign(campaigns, other.owner_key, sponsor.id)
    foreign = await create_line_item(campaigns, other.owner_key, campaign.id)
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    slot = booked.placement.ad_slot_id
    records = [
        exposure(booked, 0, hour_ago),
        exposure(booked, 1, hour_ago, id=""),
        exposure(booked, 2, hour_ago, id="x" * 129),
        exposure(booked, 3, None),
        exposure(booked, 4, now + timedelta(minutes=10)),
        exposure(booked, 5, now - timedelta(days=200)),
        exposure(booked, 6, hour_ago, line_item_id=str(uuid.uuid4())),
        exposure(booked, 7, hour_ago, line_item_id=foreign.id),
        exposure(booked, 8, hour_ago, line_item_id="not-a-line-item"),
        exposure(booked, 9, hour_ago, client_ip="999.1.1.1"),
        exposure(booked, 10, hour_ago, client_ip=""),
        exposure(booked, 11, hour_ago, podcast_id="p" * 3000),
        # The line item's flight starts yesterday at 00:00.
        exposure(booked, 12, booked.flight_start - timedelta(hours=1)),
        exposure(booked, 13, hour_ago, placement_id=booked.placement.id, ad_slot_id=slot),
        exposure(booked, 14, hour_ago, placement_id=booked.placement.id),
        exposure(booked, 15, hour_ago, episode_id="episode-1"),
        exposure(booked, 16, hour_ago, id="adserver-0"),
        exposure(booked, 17, hour_ago, country_code="USA"),
        exposure(booked, 18, hour_ago, placement_id=str(uuid.uuid4()), ad_slot_id=slot),
        exposure(booked, 19, hour_ago, id="nul\0id"),
    ]
    expected_rejections = [
        (1, Reason.REJECTION_REASON_INVALID_ID),
        (2, Reason.REJECTION_REASON_INVALID_ID),
        (3, Reason.REJECTION_REASON_MISSING_TIME),
        (4, Reason.REJECTION_REASON_TIME_IN_FUTURE),
        (5, Reason.REJECTION_REASON_TIME_TOO_OLD),
        (6, Reason.REJECTION_REASON_UNKNOWN_LINE_ITEM),
        (7, Reason.REJECTION_REASON_UNKNOWN_LINE_ITEM),
        (8, Reason.REJECTION_REASON_UNKNOWN_LINE_ITEM),
        (9, Reason.REJECTION_REASON_INVALID_CLIENT_IP),
        (10, Reason.REJECTION_REASON_INVALID_CLIENT_IP),
        (11, Reason.REJECTION_REASON_FIELD_TOO_LONG),
        (12, Reason.REJECTION_REASON_OUTSIDE_FLIGHT),
        (14, Reason.REJECTION_REASON_UNKNOWN_PLACEMENT),
        (15, Reason.REJECTION_REASON_INVALID_FIELD),
        (17, Reason.REJECTION_REASON_INVALID_FIELD),
        (18, Reason.REJECTION_REASON_UNKNOWN_PLACEMENT),
        (19, Reason.REJECTION_REASON_INVALID_ID),
    ]
    # An ingest-only key: it may not read campaigns, yet line items are checked.
    ingest_key = await api_key(tenants, booked.tenant.owner_key)
    request = pb.IngestExposuresRequest(exposures=records)
    first = await attribution.IngestExposures(request, metadata=bearer(ingest_key))
    assert (first.accepted_count, first.duplicate_count) == (2, 1)
    assert [(r.index, r.reason) for r in first.rejections] == expected_rejections
    assert all(r.message for r in first.rejections)
    assert [r.event_id for r in first.rejections][:2] == ["", "x" * 128]

    again = await attribution.IngestExposures(request, metadata=bearer(ingest_key))
    assert (again.accepted_count, again.duplicate_count) == (0, 3)
    assert [(r.index, r.reason) for r in again.rejections] == expected_rejections

    listed = await attribution.ListExposures(
        pb.ListExposuresRequest(source=pb.EXPOSURE_SOURCE_INGESTED),
        metadata=bearer(booked.tenant.owner_key),
    )
    by_id = {e.id: e for e in listed.exposures}
    assert set(by_id) == {"adserver-0", "adserver-13"}
    hasher = IpHasher(stack.secrets.ip_hash_secret.encode(), booked.tenant.id)
    plain = by_id["adserver-0"]
    assert plain.household_id == hasher.household_id("192.0.2.1").hex()
    assert (plain.country_code, plain.placement_id, plain.episode_id) == ("US", "", "")
    assert plain.campaign_id == booked.line_item.campaign_id
    assert plain.exposure_time.ToDatetime(tzinfo=UTC) == hour_ago
    assert not plain.client_ip
    placed = by_id["adserver-13"]
    assert (placed.placement_id, placed.episode_id, placed.podcast_id) == (
        booked.placement.id,
        booked.episode.id,
        booked.episode.podcast_id,
    )

    # The other tenant sees none of it, and its line item id was unknown here.
    theirs = await attribution.ListExposures(
        pb.ListExposuresRequest(), metadata=bearer(other.owner_key)
    )
    assert list(theirs.exposures) == []


async def test_batches_are_bounded(
    booked: Booked, attribution: attribution_pb2_grpc.AttributionServiceAsyncStub
) -> None:
    key = booked.tenant.owner_key
    when = datetime.now(UTC) - timedelta(minutes=1)
    oversized = pb.IngestExposuresRequest(
        exposures=[exposure(booked, n % 200, when, id=f"o-{n}") for n in range(5_001)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await attribution.IngestExposures(oversized, metadata=bearer(key))
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(too_many.value).reason == "BATCH_TOO_LARGE"
    assert violated_fields(too_many.value) == ["exposures"]
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await attribution.IngestExposures(pb.IngestExposuresRequest(), metadata=bearer(key))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(empty.value) == ["exposures"]

    most = pb.IngestExposuresRequest(
        exposures=[exposure(booked, n % 200, when, id=f"m-{n}") for n in range(5_000)]
    )
    answer = await attribution.IngestExposures(most, metadata=bearer(key))
    assert (answer.accepted_count, len(answer.rejections)) == (5_000, 0)


async def test_ingest_as_json_and_list_filters_and_pages(
    booked: Booked,
    other: TenantHandle,
    http: httpx.AsyncClient,
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    stack: Stack,
) -> None:
    key = booked.tenant.owner_key
    headers = {"authorization": f"Bearer {key}"}
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    body = {
        "exposures": [
            {
                "id": f"json-{n}",
                "exposureTime": (base + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
                "lineItemId": booked.line_item.id,
                "clientIp": "198.51.100.4" if n % 2 else "2001:db8:1:2:3::9",
                **(
                    {"placementId": booked.placement.id, "adSlotId": booked.placement.ad_slot_id}
                    if n < 3
                    else {}
                ),
            }
            for n in range(7)
        ]
    }
    response = await http.post("/api/v1/exposures:ingest", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["acceptedCount"] == 7

    seen: list[pb.Exposure] = []
    token = ""
    while True:
        page = await attribution.ListExposures(
            pb.ListExposuresRequest(
                line_item_id=booked.line_item.id, page_size=3, page_token=token
            ),
            metadata=bearer(key),
        )
        assert len(page.exposures) <= 3
        seen.extend(page.exposures)
        token = page.next_page_token
        if not token:
            break
    assert [e.id for e in seen] == [f"json-{n}" for n in reversed(range(7))]

    async def ids(**filters: Any) -> list[str]:
        answer = await attribution.ListExposures(
            pb.ListExposuresRequest(**filters), metadata=bearer(key)
        )
        return [e.id for e in answer.exposures]

    assert await ids(placement_id=booked.placement.id) == ["json-2", "json-1", "json-0"]
    assert await ids(episode_id=booked.episode.id) == ["json-2", "json-1", "json-0"]
    assert (
        await ids(campaign_id=booked.line_item.campaign_id, source=pb.EXPOSURE_SOURCE_ANALYTICS)
        == []
    )
    assert await ids(
        start_time=ts(base + timedelta(minutes=2)), end_time=ts(base + timedelta(minutes=4))
    ) == ["json-3", "json-2"]
    household = IpHasher(stack.secrets.ip_hash_secret.encode(), booked.tenant.id).household_id(
        "198.51.100.4"
    )
    assert await ids(household_id=household.hex()) == ["json-5", "json-3", "json-1"]
    assert await ids(line_item_id=str(uuid.uuid4())) == []

    first = await attribution.ListExposures(
        pb.ListExposuresRequest(page_size=2), metadata=bearer(key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as moved:
        await attribution.ListExposures(
            pb.ListExposuresRequest(
                page_size=2, page_token=first.next_page_token, placement_id=booked.placement.id
            ),
            metadata=bearer(key),
        )
    assert moved.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as foreign_token:
        await attribution.ListExposures(
            pb.ListExposuresRequest(page_size=2, page_token=first.next_page_token),
            metadata=bearer(other.owner_key),
        )
    assert foreign_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await attribution.ListExposures(
            pb.ListExposuresRequest(
                household_id="zz",
                campaign_id="nope",
                start_time=ts(base),
                end_time=Timestamp(seconds=int(base.timestamp()) - 1),
            ),
            metadata=bearer(key),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad.value) == ["campaign_id", "household_id", "end_time"]


async def test_exposure_rows_are_held_to_their_tenant(
    booked: Booked,
    other: TenantHandle,
    attribution: attribution_pb2_grpc.AttributionServiceAsyncStub,
    stack: Stack,
) -> None:
    when = datetime.now(UTC) - timedelta(minutes=3)
    answer = await attribution.IngestExposures(
        pb.IngestExposuresRequest(exposures=[exposure(booked, 1, when, id="rls-1")]),
        metadata=bearer(booked.tenant.owner_key),
    )
    assert answer.accepted_count == 1
    conn = await asyncpg.connect(stack.app_dsn)
    try:
        for table in ("exposures", "attribution_keys", "analytics_exposure_outbox"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", other.id)
            assert await conn.fetchval("SELECT count(*) FROM exposures") == 0
            assert await conn.fetchval("SELECT count(*) FROM attribution_keys") == 0
            deleted = await conn.execute("DELETE FROM exposures")
            assert deleted == "DELETE 0"
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", booked.tenant.id)
            assert await conn.fetchval("SELECT count(*) FROM exposures") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _insert_exposure_as(conn, acting_as=other.id, row_tenant=booked.tenant.id)
    finally:
        await conn.close()


async def _insert_exposure_as(conn: asyncpg.Connection, *, acting_as: str, row_tenant: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", acting_as)
        await conn.execute(
            """
            INSERT INTO exposures (tenant_id, exposure_time, receive_time, campaign_id,
                line_item_id, source, household_id, exposure_id)
            VALUES ($1, now(), now(), $2, $2, 2, '\\x00', 'forged')
            """,
            uuid.UUID(row_tenant),
            uuid.uuid4(),
        )
