"""Helpers the campaign tests and benchmark share: a tenant with a podcast and episodes
with ad slots in the catalog, and sponsors, campaigns and line items."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.campaign.v1 import campaign_pb2 as cpb
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.type.v1 import money_pb2

from tests.catalog.support import FeedServer
from tests.support import TenantHandle, bearer

CampaignStub: TypeAlias = "campaign_pb2_grpc.CampaignServiceAsyncStub"
CatalogStub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"
MEDIA_BYTES = 52_428_800  # the enclosure length of apple.xml's first episode
AD_START, AD_END = 1_000_000, 1_959_999
RATE = 2500  # USD 25.00 CPM
GOAL = 3000
LISTENER_AGENT = "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X; en_us)"
CAMPAIGN_TABLES = (
    "sponsors",
    "campaigns",
    "line_items",
    "placements",
    "deals",
    "deal_events",
    "campaign_audit_outbox",
)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def seconds(value: float) -> Duration:
    out = Duration()
    out.FromMilliseconds(round(value * 1000))
    return out


def usd(minor: int, currency: str = "USD") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor)


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Inventory:
    podcast_id: str
    episodes: list[kpb.Episode]


async def create_inventory(
    catalog: CatalogStub,
    key: str,
    *,
    episodes: int = 1,
    categories: tuple[str, ...] = ("Business",),
    explicit: bool = False,
    publish: datetime | None = None,
    title: str = "Money Matters",
    description: str = "Weekly talk about personal finance and budgeting.",
) -> Inventory:
    podcast = (
        await catalog.CreatePodcast(
            kpb.CreatePodcastRequest(
                podcast=kpb.Podcast(
                    title=title, description=description, categories=list(categories)
                )
            ),
            metadata=bearer(key),
        )
    ).podcast
    created = []
    published = publish or datetime.now(UTC) - timedelta(days=2)
    for n in range(episodes):
        episode = kpb.Episode(
            title=f"Episode {n}",
            media_url=f"https://cdn.example.com/{uuid.uuid4().hex}.mp3",
            media_size_bytes=10_000 + 57_600_000,
            duration=seconds(3600),
            id3_size_bytes=10_000,
            explicit=explicit,
            publish_time=ts(published),
            ad_slots=[
                kpb.AdSlot(
                    position=kpb.AD_POSITION_PRE_ROLL,
                    start_offset=seconds(0),
                    duration=seconds(30),
                    insertion=kpb.AD_INSERTION_DYNAMIC,
                ),
                kpb.AdSlot(
                    position=kpb.AD_POSITION_MID_ROLL,
                    start_offset=seconds(1800),
                    duration=seconds(60),
                    insertion=kpb.AD_INSERTION_DYNAMIC,
                ),
            ],
        )
        created.append(
            (
                await catalog.CreateEpisode(
                    kpb.CreateEpisodeRequest(podcast_id=podcast.id, episode=episode),
                    metadata=bearer(key),
                )
            ).episode
        )
    return Inventory(podcast.id, created)


async def create_sponsor(
    stub: CampaignStub, key: str, name: str = "Acme Meals", category: str = "meal kits"
) -> cpb.Sponsor:
    response = await stub.CreateSponsor(
        cpb.CreateSponsorRequest(
            sponsor=cpb.Sponsor(
                display_name=name,
                domain="acme.example",
                iab_categories=["210"],
                competitive_category=category,
            )
        ),
        metadata=bearer(key),
    )
    return response.sponsor


async def create_campaign(
    stub: CampaignStub,
    key: str,
    sponsor_id: str,
    *,
    budget: int = 1_000_000,
    start: datetime | None = None,
    end: datetime | None = None,
    currency: str = "USD",
) -> cpb.Campaign:
    start = start or day_floor(datetime.now(UTC)) - timedelta(days=1)
    end = end or start + timedelta(days=30)
    response = await stub.CreateCampaign(
        cpb.CreateCampaignRequest(
            campaign=cpb.Campaign(
                sponsor_id=sponsor_id,
                display_name="Spring push",
                budget=usd(budget, currency),
                flight_start_time=ts(start),
                flight_end_time=ts(end),
            )
        ),
        metadata=bearer(key),
    )
    return response.campaign


async def create_line_item(
    stub: CampaignStub, key: str, campaign_id: str, **fields: Any
) -> cpb.LineItem:
    values: dict[str, Any] = {
        "campaign_id": campaign_id,
        "display_name": "Mid-rolls",
        "ad_type": cpb.AD_TYPE_DYNAMIC,
        "pricing_model": cpb.PRICING_MODEL_CPM,
        "rate": usd(2500),
        "impression_goal": 10_000,
    }
    values.update(fields)
    response = await stub.CreateLineItem(
        cpb.CreateLineItemRequest(line_item=cpb.LineItem(**values)), metadata=bearer(key)
    )
    return response.line_item


async def row_counts(conn: asyncpg.Connection, tenant_id: str) -> dict[str, int]:
    counts = {}
    for table in CAMPAIGN_TABLES:
        counts[table] = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
    return counts


async def imported_episode(
    catalog: CatalogStub, feeds: FeedServer, tenant: TenantHandle
) -> kpb.Episode:
    """The newest episode of an imported feed, given a dynamic mid-roll slot."""
    key = tenant.owner_key
    url = feeds.serve_fixture(f"/{tenant.slug}/apple.xml", "apple.xml")
    imported = await catalog.ImportFeed(kpb.ImportFeedRequest(feed_url=url), metadata=bearer(key))
    episodes = await catalog.ListEpisodes(
        kpb.ListEpisodesRequest(podcast_id=imported.podcast.id), metadata=bearer(key)
    )
    episode = episodes.episodes[0]
    assert episode.media_size_bytes == MEDIA_BYTES
    updated = await catalog.UpdateEpisode(
        kpb.UpdateEpisodeRequest(
            episode=kpb.Episode(
                id=episode.id,
                ad_slots=[
                    kpb.AdSlot(
                        position=kpb.AD_POSITION_MID_ROLL,
                        start_offset=seconds(600),
                        duration=seconds(60),
                        insertion=kpb.AD_INSERTION_DYNAMIC,
                        start_byte=AD_START,
                        end_byte=AD_END,
                    )
                ],
            ),
            update_mask=FieldMask(paths=["ad_slots"]),
        ),
        metadata=bearer(key),
    )
    return updated.episode


def listener_requests(episode_id: str, when: datetime, listeners: int) -> list[apb.ListenerRequest]:
    """`listeners` whole-file downloads (each delivers the ad), plus requests that
    deliver no ad: one stops before the ad's bytes, a bot, a HEAD."""
    out = []
    for n in range(listeners):
        out.append(
            apb.ListenerRequest(
                id=str(uuid.uuid4()),
                request_time=ts(when + timedelta(seconds=n)),
                episode_id=episode_id,
                client_ip=f"203.0.113.{n + 1}",
                user_agent=LISTENER_AGENT,
                http_method="GET",
                status_code=200,
                bytes_served=MEDIA_BYTES,
            )
        )
    early_stop = apb.ListenerRequest(
        id=str(uuid.uuid4()),
        request_time=ts(when),
        episode_id=episode_id,
        client_ip="198.51.100.7",
        user_agent=LISTENER_AGENT,
        http_method="GET",
        status_code=206,
        range="bytes=0-",
        bytes_served=AD_START + 10,
    )
    bot = apb.ListenerRequest(
        id=str(uuid.uuid4()),
        request_time=ts(when),
        episode_id=episode_id,
        client_ip="198.51.100.8",
        user_agent="curl/8.1.2",
        http_method="GET",
        status_code=200,
        bytes_served=MEDIA_BYTES,
    )
    head = apb.ListenerRequest(
        id=str(uuid.uuid4()),
        request_time=ts(when),
        episode_id=episode_id,
        client_ip="198.51.100.9",
        user_agent=LISTENER_AGENT,
        http_method="HEAD",
        status_code=200,
    )
    return [*out, early_stop, bot, head]
