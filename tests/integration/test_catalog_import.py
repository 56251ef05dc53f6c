"""ImportFeed against feeds served over HTTP by the test, as a podcast host would."""

from __future__ import annotations

from typing import TypeAlias

import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import FeedServer, fixture
from tests.support import TenantHandle, bearer, create_tenant

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token, "feed")


async def import_url(catalog: Stub, key: str, url: str, **options: object) -> pb.ImportFeedResponse:
    return await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_url=url, **options),  # type: ignore[arg-type]
        metadata=bearer(key),
    )


async def episodes_of(catalog: Stub, key: str, podcast_id: str) -> dict[str, pb.Episode]:
    page = await catalog.ListEpisodes(
        pb.ListEpisodesRequest(podcast_id=podcast_id, page_size=200), metadata=bearer(key)
    )
    return {e.guid: e for e in page.episodes}


async def test_apple_feed_with_itunes_tags(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    url = feeds.serve_fixture(f"/{tenant.slug}/apple.xml", "apple.xml")
    result = await import_url(catalog, tenant.owner_key, url)
    assert result.podcast_created
    assert (result.created_episode_count, result.updated_episode_count) == (5, 0)
    assert (result.skipped_item_count, list(result.warnings)) == (0, [])
    podcast = result.podcast
    assert podcast.title == "The Personal Finance Hour"
    assert podcast.author == "Maya Okafor"
    assert (podcast.owner_name, podcast.owner_email) == (
        "Ledger Lane Media",
        "podcasts@ledgerlane.example.com",
    )
    assert list(podcast.categories) == ["Business/Investing", "Education/Self-Improvement"]
    assert podcast.language == "en-US"
    assert podcast.feed_url == url
    assert podcast.artwork_url == "https://personalfinancehour.example.com/artwork-3000.jpg"
    assert podcast.podcast_type == pb.PODCAST_TYPE_EPISODIC
    assert not podcast.explicit
    assert podcast.episode_count == 5
    assert podcast.latest_publish_time.ToJsonString() == "2024-03-12T08:00:00Z"
    assert podcast.HasField("last_import_time")
    keywords = [k.text for k in podcast.keywords]
    assert keywords[:1]
    assert podcast.keywords[0].weight == 1.0
    assert {"retirement", "index funds", "debt payoff"} & set(keywords)

    episodes = await episodes_of(catalog, tenant.owner_key, podcast.id)
    index = episodes["pfh-045"]
    assert index.title == "Index Funds Explained"
    assert index.media_url.startswith("https://dts.podtrac.com/redirect.mp3/")
    assert index.duration.ToSeconds() == 54 * 60 + 36
    assert index.media_size_bytes == 52_428_800
    assert index.bitrate_derived
    assert index.bitrate_bps == round(52_428_800 * 8 / 3276)
    assert (index.season_number, index.episode_number) == (3, 45)
    assert index.episode_type == pb.EPISODE_TYPE_FULL
    assert episodes["pfh-044"].explicit  # itunes:explicit "true"
    assert episodes["pfh-044"].duration.ToSeconds() == 2622
    assert episodes["pfh-043"].duration.ToSeconds() == 49 * 60 + 10
    assert episodes["pfh-bonus-7"].episode_type == pb.EPISODE_TYPE_BONUS
    assert episodes["pfh-s3-trailer"].episode_type == pb.EPISODE_TYPE_TRAILER

    resolved = await catalog.ResolveEpisode(
        pb.ResolveEpisodeRequest(
            media_url="https://media.personalfinancehour.example.com/pfh-045-index-funds.mp3"
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert resolved.episode_media.episode_id == index.id


async def test_podcasting20_feed_with_transcripts(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    feeds.serve("/transcripts/s1e1.vtt", fixture("s1e1.vtt"), content_type="text/vtt")
    feeds.serve("/transcripts/s1e2.json", fixture("s1e2.json"), content_type="application/json")
    feeds.serve("/transcripts/s1e2.vtt", fixture("s1e2.vtt"), content_type="text/vtt")
    url = feeds.serve_fixture(f"/{tenant.slug}/p20.xml", "podcasting20.xml")
    result = await import_url(catalog, tenant.owner_key, url)
    assert result.created_episode_count == 3
    assert list(result.warnings) == []
    podcast = result.podcast
    assert podcast.podcast_guid == "1c3d6a7e-5a43-5f3c-9a4e-2f8d0e9b7c11"
    assert podcast.podcast_type == pb.PODCAST_TYPE_SERIAL
    assert list(podcast.categories) == ["Technology", "Leisure/Hobbies"]

    episodes = await episodes_of(catalog, tenant.owner_key, podcast.id)
    yagi = episodes["openwaves-s1e2"]
    # The JSON transcript is preferred over the captions file.
    assert yagi.transcript_url == feeds.url("/transcripts/s1e2.json")
    assert yagi.has_transcript
    assert (yagi.season_number, yagi.episode_number) == (1, 2)
    assert episodes["openwaves-s1e1"].has_transcript
    assert not episodes["openwaves-trailer"].has_transcript
    assert episodes["openwaves-trailer"].episode_type == pb.EPISODE_TYPE_TRAILER

    # Words only the transcripts contain are searchable, and count as topics.
    found = await catalog.SearchEpisodes(
        pb.SearchEpisodesRequest(query="transponders"), metadata=bearer(tenant.owner_key)
    )
    assert [r.episode.guid for r in found.results] == ["openwaves-s1e1"]
    # The response already counts the transcripts fetched after the import.
    assert "transponders" in [k.text for k in podcast.keywords]

    fetched = feeds.hits["/transcripts/s1e2.json"]
    again = await import_url(catalog, tenant.owner_key, url)
    assert (again.created_episode_count, again.updated_episode_count) == (0, 0)
    assert again.unchanged_episode_count == 3
    assert feeds.hits["/transcripts/s1e2.json"] == fetched  # not fetched twice


async def test_messy_feed_imports_what_it_can(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    url = feeds.serve_fixture(f"/{tenant.slug}/messy.xml", "messy.xml")
    result = await import_url(catalog, tenant.owner_key, url)
    podcast = result.podcast
    assert podcast.title == "Kitchen Table Cooking"
    assert podcast.language == "en-GB"
    assert "José" in podcast.description
    assert "<script>" not in podcast.description
    assert list(podcast.categories) == ["Arts/Food"]
    # Eight items: a repeated GUID, one without enclosure, one with an ftp URL.
    assert result.created_episode_count == 5
    assert result.skipped_item_count == 3
    messages = {(w.item, w.message) for w in result.warnings}
    assert ("ktc-12", "duplicate GUID, item skipped") in messages
    assert ("ktc-announcement", "no enclosure, skipped") in messages
    assert ("ktc-11", "unparseable duration '1h2', left unset") in messages
    assert any("unparseable publish date" in m for _, m in messages)

    episodes = await episodes_of(catalog, tenant.owner_key, podcast.id)
    assert episodes["ktc-12"].publish_time.ToJsonString() == "2024-03-05T00:00:00Z"
    assert not episodes["ktc-11"].HasField("publish_time")
    assert not episodes["ktc-11"].HasField("duration")
    assert episodes["ktc-09"].media_size_bytes == 0  # length "-5"
    assert episodes["ktc-09"].publish_time.ToJsonString() == "2024-02-15T15:00:00Z"
    assert episodes["ktc-08"].title == "ktc08 bread baking tips"
    # No GUID: the enclosure URL stands in, and re-import matches on it.
    pasta_guid = "http://media.kitchentable.example.net/ktc10.mp3?source=rss"
    assert episodes[pasta_guid].title == "Weeknight Pasta"
    again = await import_url(catalog, tenant.owner_key, url)
    assert again.unchanged_episode_count == 5
    assert again.created_episode_count == 0


async def test_reimport_after_edit_changes_exactly_what_changed(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    path = f"/{tenant.slug}/edited.xml"
    original = fixture("apple.xml")
    url = feeds.serve(path, original)
    first = await import_url(catalog, tenant.owner_key, url)
    before = await episodes_of(catalog, tenant.owner_key, first.podcast.id)

    edited = (
        original.replace(
            b"<title>Retirement Accounts 101</title>", b"<title>Retirement 101</title>"
        )
        .replace(
            b"<itunes:duration>2622</itunes:duration>", b"<itunes:duration>2700</itunes:duration>"
        )
        .replace(
            b'<guid isPermaLink="false">pfh-s3-trailer</guid>', b"<guid>pfh-s3-trailer-v2</guid>"
        )
    )
    assert edited.count(b"pfh-s3-trailer-v2") == 1
    # The old trailer item is gone and a new one (new GUID, new file) took its place.
    edited = edited.replace(b"pfh-s3-trailer.mp3", b"pfh-s3-trailer-v2.mp3")
    feeds.serve(path, edited)
    second = await import_url(catalog, tenant.owner_key, url)
    assert not second.podcast_created
    assert second.podcast.id == first.podcast.id
    assert (
        second.created_episode_count,
        second.updated_episode_count,
        second.unchanged_episode_count,
        second.missing_episode_count,
    ) == (1, 2, 2, 1)
    after = await episodes_of(catalog, tenant.owner_key, first.podcast.id)
    assert after["pfh-043"].title == "Retirement 101"
    assert after["pfh-044"].duration.ToSeconds() == 2700
    assert after["pfh-044"].bitrate_bps != before["pfh-044"].bitrate_bps
    for guid in ("pfh-045", "pfh-bonus-7"):
        assert after[guid] == before[guid]  # update_time included: not written
    assert after["pfh-043"].update_time != before["pfh-043"].update_time
    # Missing episodes are kept: old files are still downloaded.
    assert "pfh-s3-trailer" in after
    assert "pfh-s3-trailer-v2" in after
    assert second.podcast.episode_count == 6


async def test_feed_body_validate_only_and_redirects(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    body = (
        fixture("apple.xml")
        .replace(b"pfh-", b"body-")
        .replace(b"personalfinancehour.example.com/rss", f"{tenant.slug}.example/rss".encode())
    )
    preview = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body, validate_only=True), metadata=bearer(tenant.owner_key)
    )
    assert preview.podcast_created
    assert preview.created_episode_count == 5
    listed = await catalog.ListPodcasts(pb.ListPodcastsRequest(), metadata=bearer(tenant.owner_key))
    assert list(listed.podcasts) == []

    imported = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body), metadata=bearer(tenant.owner_key)
    )
    assert imported.podcast.feed_url == f"https://feeds.{tenant.slug}.example/rss"
    # The same document again is recognised by its atom:link rel=self.
    again = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body), metadata=bearer(tenant.owner_key)
    )
    assert again.podcast.id == imported.podcast.id
    assert again.unchanged_episode_count == 5

    target = feeds.serve(f"/{tenant.slug}/moved.xml", fixture("messy.xml"))
    hop = feeds.redirect(f"/{tenant.slug}/old.xml", target, status=301)
    moved = await import_url(catalog, tenant.owner_key, hop)
    assert moved.podcast.title == "Kitchen Table Cooking"
    assert moved.podcast.feed_url == hop

    into = await import_url(catalog, tenant.owner_key, target, podcast_id=moved.podcast.id)
    assert into.podcast.id == moved.podcast.id
    assert into.podcast.feed_url == target
    assert into.unchanged_episode_count == 5


async def test_items_whose_media_url_another_podcast_holds_are_skipped(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    first = await import_url(
        catalog, tenant.owner_key, feeds.serve_fixture(f"/{tenant.slug}/a.xml", "apple.xml")
    )
    copy = fixture("apple.xml").replace(b"The Personal Finance Hour", b"Finance Rebroadcast")
    copy = copy.replace(b">pfh-045</guid>", b">rebroadcast-1</guid>")
    result = await import_url(catalog, tenant.owner_key, feeds.serve(f"/{tenant.slug}/b.xml", copy))
    assert result.podcast.id != first.podcast.id
    assert result.created_episode_count == 0
    assert result.skipped_item_count == 5
    assert all("already belongs to episode" in w.message for w in result.warnings)


async def test_transcripts_that_cannot_be_had_are_warnings(
    catalog: Stub, feeds: FeedServer, tenant: TenantHandle
) -> None:
    body = fixture("podcasting20.xml", feeds.url(f"/{tenant.slug}/missing"))
    result = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body), metadata=bearer(tenant.owner_key)
    )
    assert result.created_episode_count == 3
    failures = [w for w in result.warnings if "transcript" in w.message]
    assert {w.item for w in failures} == {"openwaves-s1e1", "openwaves-s1e2"}
    assert all("HTTP 404" in w.message for w in failures)
    episodes = await episodes_of(catalog, tenant.owner_key, result.podcast.id)
    assert not any(e.has_transcript for e in episodes.values())
