"""Catalog resources over native gRPC, on the catalog's own port."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import TypeAlias

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import seconds
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"
Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


@pytest.fixture
async def tenant(tenants: Tenants, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "cat")


async def new_podcast(
    catalog: Stub, key: str, title: str = "Weekly Show", **fields: object
) -> pb.Podcast:
    response = await catalog.CreatePodcast(
        pb.CreatePodcastRequest(podcast=pb.Podcast(title=title, **fields)),  # type: ignore[arg-type]
        metadata=bearer(key),
    )
    return response.podcast


async def new_episode(catalog: Stub, key: str, podcast_id: str, episode: pb.Episode) -> pb.Episode:
    response = await catalog.CreateEpisode(
        pb.CreateEpisodeRequest(podcast_id=podcast_id, episode=episode), metadata=bearer(key)
    )
    return response.episode


def media(n: int) -> str:
    return f"https://cdn.example.com/show/{uuid.uuid4().hex[:8]}-{n}.mp3"


async def test_podcast_round_trip(catalog: Stub, tenant: TenantHandle) -> None:
    created = await new_podcast(
        catalog,
        tenant.owner_key,
        title="  Money Matters  ",
        author="Ana Silva",
        description="<p>Weekly talk about <b>personal finance</b> and budgeting.</p>",
        categories=["business / investing", "Education"],
        language="pt-br",
        feed_url="https://feeds.example.com/money.xml",
        owner_email="ana@example.com",
        explicit=True,
        podcast_type=pb.PODCAST_TYPE_SERIAL,
    )
    assert created.title == "Money Matters"
    assert list(created.categories) == ["Business/Investing", "Education"]
    assert created.language == "pt-BR"
    assert created.HasField("create_time")
    assert created.episode_count == 0
    assert "finance" in [k.text for k in created.keywords]

    got = await catalog.GetPodcast(
        pb.GetPodcastRequest(podcast_id=created.id), metadata=bearer(tenant.owner_key)
    )
    assert got.podcast == created

    await catalog.DeletePodcast(
        pb.DeletePodcastRequest(podcast_id=created.id), metadata=bearer(tenant.owner_key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await catalog.GetPodcast(
            pb.GetPodcastRequest(podcast_id=created.id), metadata=bearer(tenant.owner_key)
        )
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND
    assert error_info(gone.value).reason == "PODCAST_NOT_FOUND"


async def test_episode_round_trip_with_derived_media_facts(
    catalog: Stub, tenant: TenantHandle
) -> None:
    podcast = await new_podcast(catalog, tenant.owner_key)
    url = media(1)
    # 60 minutes at 128 kbps after a 10,000-byte ID3 tag.
    created = await new_episode(
        catalog,
        tenant.owner_key,
        podcast.id,
        pb.Episode(
            title="Pilot",
            guid="pilot-guid",
            media_url=url + "?utm_source=rss",
            media_size_bytes=10_000 + 57_600_000,
            duration=seconds(3600),
            id3_size_bytes=10_000,
            season_number=1,
            episode_number=1,
            episode_type=pb.EPISODE_TYPE_FULL,
            transcript="A transcript about compound interest.",
            ad_slots=[
                pb.AdSlot(
                    position=pb.AD_POSITION_MID_ROLL,
                    start_offset=seconds(1800),
                    duration=seconds(60),
                    insertion=pb.AD_INSERTION_DYNAMIC,
                ),
                pb.AdSlot(
                    position=pb.AD_POSITION_PRE_ROLL,
                    start_offset=seconds(0),
                    duration=seconds(30),
                    insertion=pb.AD_INSERTION_BAKED_IN,
                    start_byte=10_000,
                    end_byte=20_000,
                ),
            ],
        ),
    )
    assert created.bitrate_bps == 128_000
    assert created.bitrate_derived
    assert created.has_transcript
    assert created.transcript == ""
    pre, mid = created.ad_slots
    assert pre.position == pb.AD_POSITION_PRE_ROLL
    assert (pre.start_byte, pre.end_byte, pre.byte_range_derived) == (10_000, 20_000, False)
    assert mid.byte_range_derived
    assert mid.start_byte == 10_000 + 1800 * 16_000
    assert mid.end_byte == 10_000 + 1860 * 16_000 - 1
    assert uuid.UUID(mid.id)

    got = await catalog.GetEpisode(
        pb.GetEpisodeRequest(episode_id=created.id), metadata=bearer(tenant.owner_key)
    )
    assert got.episode == created
    podcast_now = await catalog.GetPodcast(
        pb.GetPodcastRequest(podcast_id=podcast.id), metadata=bearer(tenant.owner_key)
    )
    assert podcast_now.podcast.episode_count == 1

    resolved = await catalog.ResolveEpisode(
        pb.ResolveEpisodeRequest(
            media_url="https://dts.podtrac.com/redirect.mp3/" + url.removeprefix("https://")
        ),
        metadata=bearer(tenant.owner_key),
    )
    facts = resolved.episode_media
    assert facts.episode_id == created.id
    assert facts.normalized_media_url == url.removeprefix("https://")
    assert facts.bitrate_bps == 128_000
    assert facts.id3_size_bytes == 10_000
    assert [s.id for s in facts.ad_slots] == [pre.id, mid.id]

    await catalog.DeleteEpisode(
        pb.DeleteEpisodeRequest(episode_id=created.id), metadata=bearer(tenant.owner_key)
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await catalog.ResolveEpisode(
            pb.ResolveEpisodeRequest(media_url=url), metadata=bearer(tenant.owner_key)
        )
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


async def test_update_mask_changes_only_named_fields(catalog: Stub, tenant: TenantHandle) -> None:
    podcast = await new_podcast(catalog, tenant.owner_key, author="First Author", language="en")
    updated = await catalog.UpdatePodcast(
        pb.UpdatePodcastRequest(
            podcast=pb.Podcast(id=podcast.id, title="Renamed", author="ignored", language="de"),
            update_mask=FieldMask(paths=["title"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert updated.podcast.title == "Renamed"
    assert updated.podcast.author == "First Author"
    assert updated.podcast.language == "en"

    episode = await new_episode(
        catalog,
        tenant.owner_key,
        podcast.id,
        pb.Episode(
            title="Before",
            media_url=media(2),
            media_size_bytes=9_600_000,
            duration=seconds(600),
            season_number=2,
            ad_slots=[
                pb.AdSlot(
                    position=pb.AD_POSITION_MID_ROLL,
                    start_offset=seconds(300),
                    duration=seconds(30),
                    insertion=pb.AD_INSERTION_DYNAMIC,
                )
            ],
        ),
    )
    assert episode.bitrate_bps == 128_000
    assert not episode.ad_slots[0].HasField("start_byte")  # no ID3 size known yet

    changed = await catalog.UpdateEpisode(
        pb.UpdateEpisodeRequest(
            episode=pb.Episode(
                id=episode.id, title="After", season_number=9, id3_size_bytes=0, guid="nope"
            ),
            update_mask=FieldMask(paths=["title", "id3_size_bytes"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    after = changed.episode
    assert after.title == "After"
    assert after.season_number == 2
    assert after.guid == episode.guid
    assert after.id3_size_bytes == 0
    slot = after.ad_slots[0]
    assert slot.id == episode.ad_slots[0].id
    assert (slot.start_byte, slot.end_byte) == (300 * 16_000, 330 * 16_000 - 1)

    # Sending the slots back as read keeps them derived: a new size moves them.
    resized = await catalog.UpdateEpisode(
        pb.UpdateEpisodeRequest(
            episode=pb.Episode(id=episode.id, media_size_bytes=4_800_000, ad_slots=after.ad_slots),
            update_mask=FieldMask(paths=["media_size_bytes", "ad_slots"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert resized.episode.bitrate_bps == 64_000
    moved = resized.episode.ad_slots[0]
    assert moved.byte_range_derived
    assert (moved.start_byte, moved.end_byte) == (300 * 8_000, 330 * 8_000 - 1)

    with pytest.raises(grpc.aio.AioRpcError) as immutable:
        await catalog.UpdateEpisode(
            pb.UpdateEpisodeRequest(
                episode=pb.Episode(id=episode.id, guid="new"), update_mask=FieldMask(paths=["guid"])
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert immutable.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(immutable.value) == ["update_mask"]


async def test_podcasts_and_episodes_page_in_stable_order(
    catalog: Stub, tenant: TenantHandle
) -> None:
    titles = ["delta", "Alpha", "charlie", "Bravo", "echo"]
    for title in titles:
        await new_podcast(catalog, tenant.owner_key, title=title)
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await catalog.ListPodcasts(
            pb.ListPodcastsRequest(page_size=2, page_token=token), metadata=bearer(tenant.owner_key)
        )
        seen += [p.title for p in page.podcasts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(titles, key=str.lower)
    assert pages == 3

    podcast = await new_podcast(catalog, tenant.owner_key, title="Episodic")
    published = []
    for n in range(7):
        ts = pb.Episode().publish_time
        ts.FromSeconds(1_700_000_000 + (n % 3) * 86_400)  # ties on purpose
        fields = {"publish_time": ts} if n != 4 else {}
        created = await new_episode(
            catalog,
            tenant.owner_key,
            podcast.id,
            pb.Episode(title=f"E{n}", media_url=media(n), **fields),  # type: ignore[arg-type]
        )
        published.append(created)
    expected = sorted(
        published,
        key=lambda e: (
            e.publish_time.ToSeconds() if e.HasField("publish_time") else -1,
            uuid.UUID(e.id),
        ),
        reverse=True,
    )
    listed: list[str] = []
    token = ""
    while True:
        episodes = await catalog.ListEpisodes(
            pb.ListEpisodesRequest(podcast_id=podcast.id, page_size=3, page_token=token),
            metadata=bearer(tenant.owner_key),
        )
        listed += [e.id for e in episodes.episodes]
        token = episodes.next_page_token
        if not token:
            break
    assert listed == [e.id for e in expected]
    assert listed[-1] == published[4].id  # no publish time: last


async def test_list_filters(catalog: Stub, tenant: TenantHandle) -> None:
    await new_podcast(
        catalog, tenant.owner_key, title="Marketing Minute", categories=["Business/Marketing"],
        language="en-US",
    )  # fmt: skip
    await new_podcast(
        catalog, tenant.owner_key, title="Invest", categories=["Business/Investing"], language="de"
    )
    await new_podcast(catalog, tenant.owner_key, title="Laughs", categories=["Comedy"])

    async def titles(category: str = "", language: str = "") -> list[str]:
        page = await catalog.ListPodcasts(
            pb.ListPodcastsRequest(category=category, language=language),
            metadata=bearer(tenant.owner_key),
        )
        return [p.title for p in page.podcasts]

    assert await titles(category="Business") == ["Invest", "Marketing Minute"]
    assert await titles(category="business/marketing") == ["Marketing Minute"]
    assert await titles(language="en") == ["Marketing Minute"]
    assert await titles(category="Comedy", language="de") == []


async def test_another_tenants_catalog_is_not_found(
    catalog: Stub, tenants: Tenants, stack: Stack
) -> None:
    a = await create_tenant(tenants, stack.admin_token, "cat-a")
    b = await create_tenant(tenants, stack.admin_token, "cat-b")
    podcast = await new_podcast(catalog, a.owner_key)
    url = media(3)
    episode = await new_episode(
        catalog, a.owner_key, podcast.id, pb.Episode(title="Secret", media_url=url)
    )
    calls: list[Awaitable[object]] = [
        catalog.GetPodcast(
            pb.GetPodcastRequest(podcast_id=podcast.id), metadata=bearer(b.owner_key)
        ),
        catalog.GetEpisode(
            pb.GetEpisodeRequest(episode_id=episode.id), metadata=bearer(b.owner_key)
        ),
        catalog.ListEpisodes(
            pb.ListEpisodesRequest(podcast_id=podcast.id), metadata=bearer(b.owner_key)
        ),
        catalog.ResolveEpisode(
            pb.ResolveEpisodeRequest(media_url=url), metadata=bearer(b.owner_key)
        ),
        catalog.UpdatePodcast(
            pb.UpdatePodcastRequest(
                podcast=pb.Podcast(id=podcast.id, title="Hijacked"),
                update_mask=FieldMask(paths=["title"]),
            ),
            metadata=bearer(b.owner_key),
        ),
        catalog.DeleteEpisode(
            pb.DeleteEpisodeRequest(episode_id=episode.id), metadata=bearer(b.owner_key)
        ),
        catalog.CreateEpisode(
            pb.CreateEpisodeRequest(
                podcast_id=podcast.id, episode=pb.Episode(title="x", media_url=media(4))
            ),
            metadata=bearer(b.owner_key),
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() is grpc.StatusCode.NOT_FOUND
    batch = await catalog.BatchGetEpisodes(
        pb.BatchGetEpisodesRequest(episode_ids=[episode.id]), metadata=bearer(b.owner_key)
    )
    assert list(batch.episodes) == []
    # B may use the same media URL: uniqueness is per tenant.
    b_podcast = await new_podcast(catalog, b.owner_key)
    await new_episode(catalog, b.owner_key, b_podcast.id, pb.Episode(title="Mine", media_url=url))
    still = await catalog.GetEpisode(
        pb.GetEpisodeRequest(episode_id=episode.id), metadata=bearer(a.owner_key)
    )
    assert still.episode.title == "Secret"


async def test_batch_get_and_batch_resolve(catalog: Stub, tenant: TenantHandle) -> None:
    podcast = await new_podcast(catalog, tenant.owner_key)
    urls = [media(n) for n in range(3)]
    episodes = [
        await new_episode(
            catalog, tenant.owner_key, podcast.id, pb.Episode(title=f"B{n}", media_url=url)
        )
        for n, url in enumerate(urls)
    ]
    unknown = str(uuid.uuid4())
    batch = await catalog.BatchGetEpisodes(
        pb.BatchGetEpisodesRequest(episode_ids=[episodes[2].id, unknown, episodes[0].id]),
        metadata=bearer(tenant.owner_key),
    )
    assert [e.id for e in batch.episodes] == [episodes[2].id, episodes[0].id]

    asked = ["http://" + urls[0].removeprefix("https://") + "#t=10", urls[1], "https://nowhere/x"]
    resolved = await catalog.BatchResolveEpisodes(
        pb.BatchResolveEpisodesRequest(
            episode_ids=[episodes[2].id, unknown, "not-a-uuid"], media_urls=asked
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert set(resolved.by_episode_id) == {episodes[2].id}
    assert set(resolved.by_media_url) == set(asked[:2])
    assert resolved.by_media_url[asked[0]].episode_id == episodes[0].id


async def test_podcast_with_episodes_needs_force(catalog: Stub, tenant: TenantHandle) -> None:
    podcast = await new_podcast(catalog, tenant.owner_key)
    episode = await new_episode(
        catalog, tenant.owner_key, podcast.id, pb.Episode(title="Kept", media_url=media(5))
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await catalog.DeletePodcast(
            pb.DeletePodcastRequest(podcast_id=podcast.id), metadata=bearer(tenant.owner_key)
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "PODCAST_HAS_EPISODES"
    await catalog.DeletePodcast(
        pb.DeletePodcastRequest(podcast_id=podcast.id, force=True),
        metadata=bearer(tenant.owner_key),
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await catalog.GetEpisode(
            pb.GetEpisodeRequest(episode_id=episode.id), metadata=bearer(tenant.owner_key)
        )
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


async def test_who_may_read_write_and_resolve(
    catalog: Stub, tenants: Tenants, tenant: TenantHandle
) -> None:
    podcast = await new_podcast(catalog, tenant.owner_key)
    url = media(6)
    await new_episode(catalog, tenant.owner_key, podcast.id, pb.Episode(title="E", media_url=url))

    async def key(scope: tenant_pb2.ApiKeyScope) -> str:
        created = await tenants.CreateApiKey(
            tenant_pb2.CreateApiKeyRequest(
                api_key=tenant_pb2.ApiKey(display_name="k", scopes=[scope])
            ),
            metadata=bearer(tenant.owner_key),
        )
        return created.secret

    ingest, read = (
        await key(tenant_pb2.API_KEY_SCOPE_INGEST),
        await key(tenant_pb2.API_KEY_SCOPE_READ),
    )
    resolved = await catalog.ResolveEpisode(
        pb.ResolveEpisodeRequest(media_url=url), metadata=bearer(ingest)
    )
    assert resolved.episode_media.podcast_id == podcast.id
    with pytest.raises(grpc.aio.AioRpcError) as no_read:
        await catalog.GetPodcast(
            pb.GetPodcastRequest(podcast_id=podcast.id), metadata=bearer(ingest)
        )
    assert no_read.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await catalog.GetPodcast(pb.GetPodcastRequest(podcast_id=podcast.id), metadata=bearer(read))
    with pytest.raises(grpc.aio.AioRpcError) as no_write:
        await new_podcast(catalog, read)
    assert no_write.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_info(no_write.value).metadata["permission"] == "catalog.write"
