"""Helpers the exposure tests share: a tenant whose imported episode's ad slot is booked
for a line item over a known flight, listener traffic through analytics, and what the
exposures table must hold given analytics' ad deliveries."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as cpb
from podmesh.catalog.v1 import catalog_pb2 as kpb

from services.attribution.exposures.domain import analytics_exposure_id
from tests.campaign_support import (
    LISTENER_AGENT,
    MEDIA_BYTES,
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_line_item,
    create_sponsor,
    day_floor,
    imported_episode,
    ts,
)
from tests.catalog.support import FeedServer
from tests.support import TenantHandle, bearer

# One exposure as the tests compare them: (id, line item, placement, episode, household
# hex, time, country).
Row = tuple[str, str, str, str, str, datetime, str]


@dataclass(frozen=True)
class Booked:
    tenant: TenantHandle
    episode: kpb.Episode
    line_item: cpb.LineItem
    placement: cpb.Placement
    flight_start: datetime
    flight_end: datetime


async def booked_slot(
    catalog: CatalogStub,
    campaigns: CampaignStub,
    feeds: FeedServer,
    tenant: TenantHandle,
    flight_start: datetime,
) -> Booked:
    """The tenant's imported episode with its mid-roll booked for a CPM line item whose
    flight starts at `flight_start` and lasts 30 days."""
    key = tenant.owner_key
    episode = await imported_episode(catalog, feeds, tenant)
    sponsor = await create_sponsor(campaigns, key)
    end = flight_start + timedelta(days=30)
    campaign = await create_campaign(campaigns, key, sponsor.id, start=flight_start, end=end)
    item = await create_line_item(campaigns, key, campaign.id)
    placement = (
        await campaigns.BookPlacement(
            cpb.BookPlacementRequest(
                line_item_id=item.id,
                episode_id=episode.id,
                ad_slot_id=episode.ad_slots[0].id,
                request_id=f"book-{uuid.uuid4()}",
            ),
            metadata=bearer(key),
        )
    ).placement
    assert placement.state == cpb.PLACEMENT_STATE_BOOKED
    return Booked(tenant, episode, item, placement, flight_start, end)


def whole_downloads(
    episode_id: str, when: datetime, ips: list[str], country: str = "DE"
) -> list[apb.ListenerRequest]:
    """One whole-file download per IP (each delivers the mid-roll), a second apart."""
    return [
        apb.ListenerRequest(
            id=str(uuid.uuid4()),
            request_time=ts(when + timedelta(seconds=n)),
            episode_id=episode_id,
            client_ip=ip,
            user_agent=LISTENER_AGENT,
            http_method="GET",
            status_code=200,
            bytes_served=MEDIA_BYTES,
            country_code=country,
        )
        for n, ip in enumerate(ips)
    ]


async def ingest(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    requests: list[apb.ListenerRequest],
    *,
    attempts: int = 60,
) -> None:
    """Ingests one batch, sent again (same ids: idempotent) while analytics restarts."""
    for attempt in range(attempts):
        try:
            answer = await analytics.IngestListenerEvents(
                apb.IngestListenerEventsRequest(requests=requests),
                metadata=bearer(key),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
            continue
        assert not answer.rejections, answer.rejections
        return


async def expected_rows(conn: asyncpg.Connection, booked: Booked) -> set[Row]:
    """Analytics' ad deliveries on the booked slot within the flight, as exposures."""
    rows = await conn.fetch(
        """
        SELECT a.episode_id, a.listener_id, a.window_start, a.delivered_time, a.household_id,
            d.country_code
        FROM ad_deliveries a
        JOIN downloads d USING (tenant_id, episode_id, listener_id, window_start)
        WHERE a.tenant_id = $1 AND a.ad_slot_id = $2
          AND a.delivered_time >= $3 AND a.delivered_time < $4
        """,
        uuid.UUID(booked.tenant.id),
        uuid.UUID(booked.placement.ad_slot_id),
        booked.flight_start,
        booked.flight_end,
    )
    slot = uuid.UUID(booked.placement.ad_slot_id)
    return {
        (
            analytics_exposure_id(
                r["episode_id"], bytes(r["listener_id"]), r["window_start"], slot
            ),
            booked.line_item.id,
            booked.placement.id,
            str(r["episode_id"]),
            bytes(r["household_id"]).hex(),
            r["delivered_time"],
            "" if r["country_code"] == "ZZ" else r["country_code"],
        )
        for r in rows
    }


async def stored_rows(conn: asyncpg.Connection, tenant_id: str) -> list[Row]:
    """Every exposure of the tenant from analytics, duplicates kept."""
    rows = await conn.fetch(
        """
        SELECT exposure_id, line_item_id, placement_id, episode_id, household_id,
            exposure_time, country_code
        FROM exposures WHERE tenant_id = $1 AND source = 1
        """,
        uuid.UUID(tenant_id),
    )
    return [
        (
            r["exposure_id"],
            str(r["line_item_id"]),
            str(r["placement_id"]),
            str(r["episode_id"]),
            bytes(r["household_id"]).hex(),
            r["exposure_time"],
            r["country_code"],
        )
        for r in rows
    ]


async def drained(conn: asyncpg.Connection, tenant_id: str, timeout_s: float = 60.0) -> None:
    """Waits until analytics' exposure outbox holds nothing of the tenant's."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = await conn.fetchval(
            "SELECT count(*) FROM analytics_exposure_outbox WHERE tenant_id = $1",
            uuid.UUID(tenant_id),
        )
        if pending == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("analytics' exposure outbox did not drain")


def flight_start_yesterday() -> datetime:
    return day_floor(datetime.now(UTC)) - timedelta(days=1)
