"""Bad catalog input gets a clear status and reason, and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import FIXTURES, FeedServer, SilentServer, fixture, seconds
from tests.support import TenantHandle, bearer, create_tenant, error_info, violated_fields

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"
TABLES = ("podcasts", "episodes", "podcast_terms")
MIB = 1024 * 1024


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "bad")


@pytest.fixture
async def podcast(catalog: Stub, tenant: TenantHandle) -> pb.Podcast:
    created = await catalog.CreatePodcast(
        pb.CreatePodcastRequest(podcast=pb.Podcast(title="Target")),
        metadata=bearer(tenant.owner_key),
    )
    return created.podcast


async def snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    counts["updates"] = await conn.fetchval(
        "SELECT coalesce(max(updated_at), '-infinity') FROM podcasts"
    )
    return counts


@pytest.fixture
async def unchanged(owner_conn: asyncpg.Connection, podcast: pb.Podcast) -> AsyncIterator[None]:
    before = await snapshot(owner_conn)
    yield
    assert await snapshot(owner_conn) == before


async def rejected(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def test_not_a_feed(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle, unchanged: None
) -> None:
    url = feeds.serve(
        f"/{tenant.slug}/page.html",
        b"<!doctype html><html><head><title>Hi</title></head><body><p>x</p></body></html>",
        content_type="text/html",
    )
    for request in (pb.ImportFeedRequest(feed_url=url), pb.ImportFeedRequest(feed_body=b'{"a":1}')):
        error = await rejected(catalog.ImportFeed(request, metadata=bearer(tenant.owner_key)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "NOT_A_FEED"


async def test_feed_body_naming_a_file_is_not_read(
    catalog: Stub, tenant: TenantHandle, unchanged: None
) -> None:
    error = await rejected(
        catalog.ImportFeed(
            pb.ImportFeedRequest(feed_body=str(FIXTURES / "apple.xml").encode()),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error_info(error).reason == "NOT_A_FEED"


async def test_body_over_the_size_limit(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle, unchanged: None
) -> None:
    # A real feed padded past 5 MiB: the limit, not the content, refuses it.
    big = fixture("apple.xml").replace(b"<channel>", b"<channel><!--" + b"x" * (5 * MIB) + b"-->")
    error = await rejected(
        catalog.ImportFeed(pb.ImportFeedRequest(feed_body=big), metadata=bearer(tenant.owner_key))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "FEED_TOO_LARGE"
    assert violated_fields(error) == ["feed_body"]

    declared = feeds.serve(f"/{tenant.slug}/big.xml", big)
    streamed = feeds.serve(f"/{tenant.slug}/big-stream.xml", big, declare_length=False)
    for url in (declared, streamed):
        error = await rejected(
            catalog.ImportFeed(
                pb.ImportFeedRequest(feed_url=url), metadata=bearer(tenant.owner_key)
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "FEED_TOO_LARGE"
        assert "5242880 byte limit" in (error.details() or "")


async def test_feed_that_times_out_or_is_unreachable(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle, unchanged: None
) -> None:
    with SilentServer() as silent:
        error = await rejected(
            catalog.ImportFeed(
                pb.ImportFeedRequest(feed_url=silent.url), metadata=bearer(tenant.owner_key)
            )
        )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert (info.reason, info.metadata["cause"]) == ("FEED_UNREACHABLE", "timeout")

    missing = feeds.url(f"/{tenant.slug}/gone.xml")
    error = await rejected(
        catalog.ImportFeed(
            pb.ImportFeedRequest(feed_url=missing), metadata=bearer(tenant.owner_key)
        )
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).metadata["cause"] == "http_404"

    loop = feeds.redirect(f"/{tenant.slug}/loop.xml", f"/{tenant.slug}/loop.xml")
    error = await rejected(
        catalog.ImportFeed(pb.ImportFeedRequest(feed_url=loop), metadata=bearer(tenant.owner_key))
    )
    assert error_info(error).metadata["cause"] == "too_many_redirects"

    error = await rejected(
        catalog.ImportFeed(
            pb.ImportFeedRequest(feed_url="ftp://example.com/feed.xml"),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["feed_url"]


async def test_failed_import_writes_nothing(
    catalog: Stub, tenant: TenantHandle, owner_conn: asyncpg.Connection
) -> None:
    # Episodes would import fine, but the podcast:guid is another podcast's.
    await catalog.CreatePodcast(
        pb.CreatePodcastRequest(
            podcast=pb.Podcast(title="Owner of the GUID", podcast_guid="taken-guid")
        ),
        metadata=bearer(tenant.owner_key),
    )
    body = fixture("podcasting20.xml").replace(
        b"1c3d6a7e-5a43-5f3c-9a4e-2f8d0e9b7c11", b"taken-guid"
    )
    target = await catalog.CreatePodcast(
        pb.CreatePodcastRequest(podcast=pb.Podcast(title="Import target")),
        metadata=bearer(tenant.owner_key),
    )
    before = await snapshot(owner_conn)
    error = await rejected(
        catalog.ImportFeed(
            pb.ImportFeedRequest(feed_body=body, podcast_id=target.podcast.id),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).reason == "PODCAST_GUID_TAKEN"
    assert await snapshot(owner_conn) == before


@pytest.fixture
async def existing_url(catalog: Stub, tenant: TenantHandle, podcast: pb.Podcast) -> str:
    url = f"https://cdn.example.com/{tenant.slug}/taken.mp3"
    await catalog.CreateEpisode(
        pb.CreateEpisodeRequest(
            podcast_id=podcast.id, episode=pb.Episode(title="First", media_url=url)
        ),
        metadata=bearer(tenant.owner_key),
    )
    return url


async def test_duplicate_media_url(
    catalog: Stub, tenant: TenantHandle, podcast: pb.Podcast, existing_url: str, unchanged: None
) -> None:
    variant = "HTTP://CDN.EXAMPLE.COM:80" + existing_url.removeprefix("https://cdn.example.com")
    for url in (existing_url, variant + "?ref=twitter", f"https://op3.dev/e/{variant}"):
        error = await rejected(
            catalog.CreateEpisode(
                pb.CreateEpisodeRequest(
                    podcast_id=podcast.id, episode=pb.Episode(title="Again", media_url=url)
                ),
                metadata=bearer(tenant.owner_key),
            )
        )
        assert error.code() is grpc.StatusCode.ALREADY_EXISTS
        info = error_info(error)
        assert (info.reason, info.metadata["field"]) == (
            "EPISODE_MEDIA_URL_TAKEN",
            "episode.media_url",
        )


async def test_negative_sizes_and_broken_slots_name_every_field(
    catalog: Stub, tenant: TenantHandle, podcast: pb.Podcast, unchanged: None
) -> None:
    error = await rejected(
        catalog.CreateEpisode(
            pb.CreateEpisodeRequest(
                podcast_id=podcast.id,
                episode=pb.Episode(
                    title="",
                    media_url="https://cdn.example.com/neg.mp3",
                    media_size_bytes=-1,
                    duration=seconds(-5),
                    bitrate_bps=-128_000,
                    id3_size_bytes=-10,
                    ad_slots=[
                        pb.AdSlot(
                            position=pb.AD_POSITION_MID_ROLL,
                            start_offset=seconds(10),
                            duration=seconds(30),
                            insertion=pb.AD_INSERTION_DYNAMIC,
                            start_byte=-4,
                        )
                    ],
                ),
            ),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == [
        "episode.title",
        "episode.media_size_bytes",
        "episode.duration",
        "episode.bitrate_bps",
        "episode.id3_size_bytes",
        "episode.ad_slots[0].start_byte",
    ]


async def test_negative_size_on_update(
    catalog: Stub, tenant: TenantHandle, podcast: pb.Podcast, existing_url: str, unchanged: None
) -> None:
    listed = await catalog.ListEpisodes(
        pb.ListEpisodesRequest(podcast_id=podcast.id), metadata=bearer(tenant.owner_key)
    )
    episode = listed.episodes[0]
    error = await rejected(
        catalog.UpdateEpisode(
            pb.UpdateEpisodeRequest(
                episode=pb.Episode(id=episode.id, media_size_bytes=-100),
                update_mask=FieldMask(paths=["media_size_bytes"]),
            ),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["episode.media_size_bytes"]


async def test_overlapping_slots_are_refused(
    catalog: Stub, tenant: TenantHandle, podcast: pb.Podcast, unchanged: None
) -> None:
    slot = pb.AdSlot(
        position=pb.AD_POSITION_MID_ROLL,
        start_offset=seconds(100),
        duration=seconds(60),
        insertion=pb.AD_INSERTION_DYNAMIC,
    )
    late = pb.AdSlot(
        position=pb.AD_POSITION_POST_ROLL,
        start_offset=seconds(130),
        duration=seconds(30),
        insertion=pb.AD_INSERTION_DYNAMIC,
    )
    error = await rejected(
        catalog.CreateEpisode(
            pb.CreateEpisodeRequest(
                podcast_id=podcast.id,
                episode=pb.Episode(
                    title="Slots",
                    media_url="https://cdn.example.com/slots.mp3",
                    duration=seconds(600),
                    ad_slots=[late, slot],
                ),
            ),
            metadata=bearer(tenant.owner_key),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["episode.ad_slots[0].start_offset"]


async def test_json_errors_through_the_gateway(
    http: httpx.AsyncClient, tenant: TenantHandle, podcast: pb.Podcast, unchanged: None
) -> None:
    auth = {"authorization": f"Bearer {tenant.owner_key}"}
    negative = await http.post(
        f"/api/v1/podcasts/{podcast.id}/episodes",
        json={
            "episode": {"title": "x", "mediaUrl": "https://c.example/x.mp3", "mediaSizeBytes": -1}
        },
        headers=auth,
    )
    assert negative.status_code == 400, negative.text
    reasons = [d.get("reason") for d in negative.json()["details"]]
    assert "INVALID_ARGUMENT" in reasons

    not_feed = await http.post(
        "/api/v1/podcasts:importFeed", json={"feedBody": "aGVsbG8="}, headers=auth
    )
    assert not_feed.status_code == 400
    assert "NOT_A_FEED" in not_feed.text
