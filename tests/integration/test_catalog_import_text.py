"""ImportFeed with text PostgreSQL cannot store (NUL, unpaired surrogates), in
fetched feeds, feed bodies and transcripts: removed with a warning, never INTERNAL."""

from __future__ import annotations

from typing import TypeAlias

import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import FeedServer, fixture
from tests.support import TenantHandle, bearer, create_tenant, error_info

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"
STRIPPED = "removed NUL or unpaired surrogate characters, which cannot be stored"


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "trust")


async def test_nul_and_surrogates_are_removed_with_a_warning(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    feeds.serve(
        "/transcripts/null-4.json",
        fixture("nul-transcript.json"),
        content_type="application/json",
    )
    url = feeds.serve_fixture(f"/{tenant.slug}/nul.xml", "nul.xml")
    result = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_url=url), metadata=bearer(tenant.owner_key)
    )
    assert (result.created_episode_count, result.skipped_item_count) == (4, 0)
    warned = {w.item for w in result.warnings if w.message == STRIPPED}
    assert warned == {"", "null-1", "null-2", "null-3"}
    podcast = result.podcast
    assert (podcast.title, podcast.author) == ("Null Island Radio", "Null Island Collective")
    assert podcast.description == "Dispatches from zero degrees north, zero degrees east."
    page = await catalog.ListEpisodes(
        pb.ListEpisodesRequest(podcast_id=podcast.id), metadata=bearer(tenant.owner_key)
    )
    episodes = {e.guid: e for e in page.episodes}
    assert set(episodes) == {"null-1", "null-2", "null-3", "null-4"}
    assert episodes["null-1"].title == "Zero Latitude"
    assert episodes["null-1"].description == "Where the equator meets the prime meridian."
    assert episodes["null-2"].title == "A raw byte"
    assert episodes["null-3"].title == "Smile  and  please"
    assert episodes["null-4"].has_transcript
    found = await catalog.SearchEpisodes(
        pb.SearchEpisodesRequest(query="weatherstation"), metadata=bearer(tenant.owner_key)
    )
    assert [r.episode.guid for r in found.results] == ["null-4"]

    # The same document sent as the body: stored as cleaned, so nothing changes.
    again = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=fixture("nul.xml", feeds.base_url)),
        metadata=bearer(tenant.owner_key),
    )
    assert again.podcast.id == podcast.id
    assert (again.created_episode_count, again.unchanged_episode_count) == (0, 4)


async def test_a_feed_of_nothing_but_nul_is_refused_not_internal(
    catalog: Stub, tenant: TenantHandle
) -> None:
    body = fixture("nul.xml").replace(b"Null&#0; Island Radio", b"&#0;\x00")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await catalog.ImportFeed(
            pb.ImportFeedRequest(feed_body=body), metadata=bearer(tenant.owner_key)
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "FEED_INVALID"
    listed = await catalog.ListPodcasts(pb.ListPodcastsRequest(), metadata=bearer(tenant.owner_key))
    assert list(listed.podcasts) == []


@pytest.mark.parametrize("character", ["\x01", "\x1f", "\x7f"])
async def test_control_characters_in_the_feed_url_are_invalid_not_internal(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle, character: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await catalog.ImportFeed(
            pb.ImportFeedRequest(feed_url=feeds.url(f"/feed{character}.xml")),
            metadata=bearer(tenant.owner_key),
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == "INVALID_ARGUMENT"


async def test_media_urls_with_control_characters_are_skipped(
    catalog: Stub, tenant: TenantHandle
) -> None:
    body = fixture("nul.xml").replace(b"null-1.mp3", b"null-\x01.mp3")
    result = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body), metadata=bearer(tenant.owner_key)
    )
    assert (result.created_episode_count, result.skipped_item_count) == (3, 1)
    assert any(w.item == "null-1" and "not an http(s) URL" in w.message for w in result.warnings)
