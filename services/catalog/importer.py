"""How a parsed feed changes the catalog: which podcast fields and episodes to
create or update, what is unchanged or missing, and what cannot be imported.

Pure: the caller reads the current state, asks for a plan, and writes it.
A feed overwrites what it states and leaves alone what it does not (a missing
itunes:duration does not erase a duration set through the API); ad slots, ID3
sizes, given bitrates and transcripts sent through the API are never in a feed,
so an import keeps them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.catalog.domain import (
    Episode,
    Podcast,
    normalize_episode,
    normalize_podcast,
    with_media_facts,
)
from services.catalog.feeds import FeedChannel, FeedItem, FeedWarning
from services.catalog.text import text_terms
from services.catalog.urls import normalize_media_url


@dataclass
class EpisodePlan:
    creates: list[Episode] = field(default_factory=list)
    # (as stored, as it will be)
    updates: list[tuple[Episode, Episode]] = field(default_factory=list)
    unchanged: int = 0
    missing: int = 0
    skipped: int = 0
    warnings: list[FeedWarning] = field(default_factory=list)


@dataclass
class PreparedEpisodes:
    plan: EpisodePlan
    # The term counts of each created episode, in plan.creates order.
    created_terms: list[Counter[str]]
    # The new term counts of updated episodes whose title or description changed.
    updated_terms: dict[uuid.UUID, Counter[str]]


def merge_podcast(current: Podcast | None, channel: FeedChannel, feed_url: str) -> Podcast:
    """The podcast as the feed describes it, on top of what is stored."""
    base = current or Podcast(id=uuid.uuid4(), title=channel.title)
    changes: dict[str, Any] = {"title": channel.title}
    for name in (
        "author",
        "description",
        "language",
        "website_url",
        "artwork_url",
        "owner_name",
        "owner_email",
        "podcast_guid",
    ):
        if getattr(channel, name):
            changes[name] = getattr(channel, name)
    if channel.categories:
        changes["categories"] = channel.categories
    if channel.explicit is not None:
        changes["explicit"] = channel.explicit
    if channel.podcast_type is not None:
        changes["podcast_type"] = channel.podcast_type
    url = feed_url or (base.feed_url if current else "") or next(iter(channel.self_urls), "")
    if url:
        changes["feed_url"] = url
    return normalize_podcast(replace(base, **changes))


def episode_from_item(item: FeedItem, podcast_id: uuid.UUID, current: Episode | None) -> Episode:
    """The episode as the item describes it, on top of what is stored."""
    base = current or Episode(
        id=uuid.uuid4(),
        podcast_id=podcast_id,
        guid=item.guid,
        title=item.title,
        media_url=item.media_url,
    )
    changes: dict[str, Any] = {
        "title": item.title,
        "description": item.description,
        "media_url": item.media_url,
    }
    for name in (
        "publish_at",
        "media_size_bytes",
        "duration_ms",
        "season_number",
        "episode_number",
        "episode_type",
        "explicit",
    ):
        if getattr(item, name) is not None:
            changes[name] = getattr(item, name)
    for name in ("media_type", "artwork_url", "transcript_url"):
        if getattr(item, name):
            changes[name] = getattr(item, name)
    return with_media_facts(normalize_episode(replace(base, **changes)))


def plan_episodes(
    podcast_id: uuid.UUID,
    existing: Sequence[Episode],
    items: Sequence[FeedItem],
    url_owners: Mapping[str, tuple[uuid.UUID, uuid.UUID]],
) -> EpisodePlan:
    """Matches items to episodes by GUID (an item without one by its media URL).

    `url_owners` maps normalised media URLs to the (episode, podcast) holding
    them anywhere in the tenant. An item whose media URL another episode keeps
    is skipped with a warning rather than failing the import: listener requests
    are matched on that URL, so it can belong to one episode only.
    """
    plan = EpisodePlan()
    by_guid = {e.guid: e for e in existing}
    by_url = {e.normalized_media_url: e for e in existing}
    # Who holds each URL once the plan is applied; unmatched episodes keep theirs.
    holder = {e.normalized_media_url: e.id for e in existing}
    matched: set[uuid.UUID] = set()
    for item in items:
        url = normalize_media_url(item.media_url)
        current = by_guid.get(item.guid)
        if current is None and not item.has_guid:
            current = by_url.get(url)
        label = item.guid if item.has_guid else item.title
        if current is not None and current.id in matched:
            plan.warnings.append(FeedWarning(label, "same episode as an earlier item, skipped"))
            plan.skipped += 1
            continue
        episode = episode_from_item(item, podcast_id, current)
        owner = holder.get(url)
        elsewhere = url_owners.get(url)
        if owner is not None and owner != episode.id:
            message = f"media URL already belongs to episode {owner} of this podcast, skipped"
        elif elsewhere is not None and elsewhere[1] != podcast_id:
            message = (
                f"media URL already belongs to episode {elsewhere[0]} of podcast "
                f"{elsewhere[1]}, skipped"
            )
        else:
            message = ""
        if message:
            plan.warnings.append(FeedWarning(label, message))
            plan.skipped += 1
            continue
        if current is not None:
            matched.add(current.id)
            if holder.get(current.normalized_media_url) == current.id:
                del holder[current.normalized_media_url]
        holder[url] = episode.id
        if current is None:
            plan.creates.append(episode)
        elif episode.stored_fields() != current.stored_fields():
            plan.updates.append((current, episode))
        else:
            plan.unchanged += 1
    plan.missing = len(existing) - len(matched)
    return plan


def prepare_episodes(
    podcast_id: uuid.UUID,
    existing: Sequence[Episode],
    items: Sequence[FeedItem],
    url_owners: Mapping[str, tuple[uuid.UUID, uuid.UUID]],
) -> PreparedEpisodes:
    """The plan and the term counts it needs: an import's CPU work, in one call
    so it can run away from the event loop."""
    plan = plan_episodes(podcast_id, existing, items, url_owners)
    return PreparedEpisodes(
        plan=plan,
        created_terms=[text_terms(e.title, e.description) for e in plan.creates],
        updated_terms={
            new.id: text_terms(new.title, new.description)
            for old, new in plan.updates
            if (old.title, old.description) != (new.title, new.description)
        },
    )
