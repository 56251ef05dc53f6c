"""Import plans: what a feed creates, updates, leaves alone, misses and skips."""

from __future__ import annotations

import uuid
from dataclasses import replace

from services.catalog.domain import Episode, Podcast
from services.catalog.feeds import FeedChannel, FeedItem, parse_feed
from services.catalog.importer import episode_from_item, merge_podcast, plan_episodes
from tests.catalog.support import fixture

PODCAST = uuid.uuid4()


def stored(items: list[FeedItem]) -> list[Episode]:
    """The episodes a first import of `items` stores."""
    return [replace(episode_from_item(i, PODCAST, None), id=uuid.uuid4()) for i in items]


def test_first_import_creates_everything() -> None:
    items = parse_feed(fixture("apple.xml")).items
    plan = plan_episodes(PODCAST, [], items, {})
    assert len(plan.creates) == 5
    assert (plan.unchanged, plan.missing, plan.skipped) == (0, 0, 0)
    assert plan.creates[0].normalized_media_url == (
        "media.personalfinancehour.example.com/pfh-045-index-funds.mp3"
    )


def test_same_feed_again_changes_nothing() -> None:
    items = parse_feed(fixture("apple.xml")).items
    plan = plan_episodes(PODCAST, stored(items), items, {})
    assert (len(plan.creates), len(plan.updates), plan.unchanged) == (0, 0, 5)


def test_edits_new_items_and_missing_ones() -> None:
    items = parse_feed(fixture("apple.xml")).items
    existing = stored(items)
    edited = [replace(items[0], title="Index Funds, Explained Again"), *items[1:4]]
    edited.append(replace(items[4], guid="new-trailer", media_url=items[4].media_url + "?v=2"))
    plan = plan_episodes(PODCAST, existing, edited, {})
    # The new trailer reuses the old trailer's file (the query string is ignored),
    # which the old trailer keeps: skipped, and the old trailer counts as missing.
    assert [new.title for _, new in plan.updates] == ["Index Funds, Explained Again"]
    assert (len(plan.creates), plan.unchanged, plan.missing, plan.skipped) == (0, 3, 1, 1)
    assert "already belongs to episode" in plan.warnings[0].message


def test_a_feed_does_not_erase_what_it_does_not_state() -> None:
    item = parse_feed(fixture("apple.xml")).items[0]
    current = replace(
        episode_from_item(item, PODCAST, None), id3_size_bytes=4_000, bitrate_bps=96_000
    )
    silent = replace(item, duration_ms=None, media_size_bytes=None, season_number=None)
    merged = episode_from_item(silent, PODCAST, current)
    assert merged.duration_ms == current.duration_ms
    assert merged.media_size_bytes == current.media_size_bytes
    assert merged.season_number == current.season_number
    assert merged.id3_size_bytes == 4_000


def test_items_without_guid_match_on_their_media_url() -> None:
    feed = parse_feed(fixture("messy.xml"))
    existing = stored(feed.items)
    retitled = [
        replace(i, title="Weeknight Pasta, Again") if not i.has_guid else i for i in feed.items
    ]
    plan = plan_episodes(PODCAST, existing, retitled, {})
    assert [new.title for _, new in plan.updates] == ["Weeknight Pasta, Again"]
    assert plan.creates == []


def test_media_url_of_another_podcast_is_skipped() -> None:
    items = parse_feed(fixture("apple.xml")).items
    elsewhere = {
        "media.personalfinancehour.example.com/pfh-044-debt.mp3": (uuid.uuid4(), uuid.uuid4())
    }
    plan = plan_episodes(PODCAST, [], items, elsewhere)
    assert len(plan.creates) == 4
    assert plan.skipped == 1


def test_merge_podcast_keeps_what_the_feed_leaves_out() -> None:
    current = Podcast(
        id=PODCAST,
        title="Old",
        author="Kept Author",
        owner_email="owner@example.com",
        feed_url="https://feeds.example.com/a.xml",
        categories=("Comedy",),
    )
    merged = merge_podcast(current, FeedChannel(title="New", explicit=True), "")
    assert (merged.title, merged.author, merged.owner_email) == (
        "New", "Kept Author", "owner@example.com",
    )  # fmt: skip
    assert merged.feed_url == "https://feeds.example.com/a.xml"
    assert merged.categories == ("Comedy",)
    assert merged.explicit
    created = merge_podcast(
        None, FeedChannel(title="T", self_urls=("https://feeds.example.com/self",)), ""
    )
    assert created.feed_url == "https://feeds.example.com/self"
