"""Typo-tolerant, ranked, paginated search over a tenant's catalog."""

from __future__ import annotations

from typing import TypeAlias

import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import fixture
from tests.support import TenantHandle, bearer, create_tenant, violated_fields

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"


@pytest.fixture(scope="module")
async def library(
    catalog: Stub, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack
) -> TenantHandle:
    """A tenant with the three fixture feeds and a few look-alike podcasts."""
    tenant = await create_tenant(tenants, stack.admin_token, "search")
    for name in ("apple.xml", "podcasting20.xml", "messy.xml"):
        await catalog.ImportFeed(
            pb.ImportFeedRequest(feed_body=fixture(name)), metadata=bearer(tenant.owner_key)
        )
    for title, description in (
        ("Open Waves Radio Hour Extended", "More open waves: longer episodes about radio."),
        ("Coastal Weekly", "Open waves, open waves, open waves: surfing the open waves."),
        ("Money Chat", "Personal finance chat for students: budgets, loans, personal finance."),
    ):
        await catalog.CreatePodcast(
            pb.CreatePodcastRequest(podcast=pb.Podcast(title=title, description=description)),
            metadata=bearer(tenant.owner_key),
        )
    return tenant


async def search(catalog: Stub, key: str, query: str, **options: object) -> list[str]:
    response = await catalog.SearchPodcasts(
        pb.SearchPodcastsRequest(query=query, **options),  # type: ignore[arg-type]
        metadata=bearer(key),
    )
    return [r.podcast.title for r in response.results]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("personal finanse", "The Personal Finance Hour"),
        ("retirment investing", "The Personal Finance Hour"),
        ("sourdogh", "Kitchen Table Cooking"),
        ("fermentaton recipes", "Kitchen Table Cooking"),
        ("antena", "Open Waves"),
        ("kitchn table", "Kitchen Table Cooking"),
    ],
)
async def test_misspelled_words_still_find_the_podcast(
    catalog: Stub, library: TenantHandle, query: str, expected: str
) -> None:
    found = await search(catalog, library.owner_key, query)
    assert found[:1] == [expected], found


async def test_exact_title_match_ranks_first(catalog: Stub, library: TenantHandle) -> None:
    found = await search(catalog, library.owner_key, "open waves")
    assert found[0] == "Open Waves"
    assert set(found) >= {"Open Waves Radio Hour Extended", "Coastal Weekly"}
    response = await catalog.SearchPodcasts(
        pb.SearchPodcastsRequest(query="Open Waves"), metadata=bearer(library.owner_key)
    )
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] >= 3 > scores[1]


async def test_search_filters_and_pages(catalog: Stub, library: TenantHandle) -> None:
    assert await search(catalog, library.owner_key, "finance", category="Business") == [
        "The Personal Finance Hour"
    ]
    everything = await search(catalog, library.owner_key, "open waves", page_size=200)
    seen: list[str] = []
    token = ""
    while True:
        response = await catalog.SearchPodcasts(
            pb.SearchPodcastsRequest(query="open waves", page_size=1, page_token=token),
            metadata=bearer(library.owner_key),
        )
        seen += [r.podcast.title for r in response.results]
        token = response.next_page_token
        if not token:
            break
    assert seen == everything
    assert len(seen) >= 3

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await catalog.SearchPodcasts(
            pb.SearchPodcastsRequest(query="antennas", page_size=1, page_token=token or "x"),
            metadata=bearer(library.owner_key),
        )
    assert violated_fields(reused.value) == ["page_token"]


async def test_search_episodes(catalog: Stub, library: TenantHandle) -> None:
    response = await catalog.SearchEpisodes(
        pb.SearchEpisodesRequest(query="index fnds"), metadata=bearer(library.owner_key)
    )
    titles = [r.episode.title for r in response.results]
    assert titles[0] == "Index Funds Explained"
    podcast_id = response.results[0].episode.podcast_id
    scoped = await catalog.SearchEpisodes(
        pb.SearchEpisodesRequest(query="season", podcast_id=podcast_id),
        metadata=bearer(library.owner_key),
    )
    assert {r.episode.podcast_id for r in scoped.results} == {podcast_id}
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await catalog.SearchEpisodes(
            pb.SearchEpisodesRequest(query="   "), metadata=bearer(library.owner_key)
        )
    assert violated_fields(empty.value) == ["query"]


async def test_search_sees_only_the_callers_tenant(
    catalog: Stub,
    library: TenantHandle,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "search-other")
    assert await search(catalog, other.owner_key, "personal finance") == []
