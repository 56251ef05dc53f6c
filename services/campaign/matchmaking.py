"""MatchPodcasts: the tenant's podcasts ranked for a campaign from catalog and analytics
facts (services.campaign.matching scores them), with the inventory's avails."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.campaign import repository as repo
from services.campaign.domain import AdPosition, LineItem, Sponsor
from services.campaign.matching import Ask, Match, PodcastFacts, rank, score
from services.campaign.operations import (
    Operations,
    campaign_or_fail,
    committed_spend,
    sponsor_or_fail,
)
from services.campaign.peers import PodcastSummary
from services.shared.errors import NotFound
from services.shared.pagination import split_page
from services.shared.peers import Metadata

# Days of downloads behind audience size and growth.
HISTORY_DAYS = 90


@dataclass(frozen=True)
class MatchResult:
    matches: list[Match]
    next_page_token: str
    # What every matching podcast together could deliver over the flight.
    available_impressions: int
    goal_warning: str


class MatchOps(Operations):
    async def match_podcasts(
        self,
        tenant_id: uuid.UUID,
        campaign_id: uuid.UUID,
        line_item_id: uuid.UUID | None,
        min_score: float,
        page_size: int,
        page_token: str,
        credentials: Metadata,
    ) -> MatchResult:
        query = {
            "list": "matches",
            "campaign_id": str(campaign_id),
            "line_item_id": str(line_item_id or ""),
            "min_score": min_score,
        }
        cursor = self._tokens.decode(page_token, query)
        async with self._db.tenant_transaction(tenant_id) as conn:
            campaign = await campaign_or_fail(conn, campaign_id)
            sponsor = await sponsor_or_fail(conn, campaign.sponsor_id)
            items = await repo.line_items_of(conn, campaign_id)
            if line_item_id is not None:
                items = [i for i in items if i.id == line_item_id]
                if not items:
                    raise NotFound("line item", str(line_item_id))
            assert campaign.budget is not None
            remaining = max(campaign.budget.minor_units - await committed_spend(conn, campaign), 0)
        ask = Ask(sponsor, items, campaign.currency, remaining)
        now = datetime.now(UTC)
        assert campaign.flight_start
        assert campaign.flight_end
        starts = [i.flight_start for i in items if i.flight_start] or [campaign.flight_start]
        ends = [i.flight_end for i in items if i.flight_end] or [campaign.flight_end]
        start, end = max(min(starts), now), max(ends)
        positions = {p for i in items for p in i.targeting.positions}
        facts = []
        for podcast in await self._catalog.podcasts(credentials):
            if items and all(_excluded(i, podcast.id) for i in items):
                continue
            facts.append(
                await self._podcast_facts(
                    tenant_id, podcast, sponsor, positions, start, end, now, credentials
                )
            )
        largest = max(
            (sum(f.daily_downloads[-30:]) / max(f.episode_count, 1) for f in facts), default=0.0
        )
        scored = [score(f, ask, largest) for f in facts]
        ranked = rank([m for m in scored if m.score >= min_score])
        if cursor is not None:
            after = (-float(cursor["s"]), str(cursor["id"]))
            ranked = [m for m in ranked if (-m.score, str(m.podcast_id)) > after]
        avails = sum(m.estimated_impressions for m in scored)
        goal = sum(i.impression_goal for i in items)
        warning = ""
        if goal > avails:
            warning = (
                f"the impression goals ({goal}) exceed what the tenant's podcasts can deliver "
                f"over the flight ({avails} impressions in free slots): expect to miss the goal "
                "or add inventory"
            )
        page, more = split_page(ranked, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"s": last.score, "id": str(last.podcast_id)}, query)
        return MatchResult(list(page), token, avails, warning)

    async def _podcast_facts(
        self,
        tenant_id: uuid.UUID,
        podcast: PodcastSummary,
        sponsor: Sponsor,
        positions: set[AdPosition],
        start: datetime,
        end: datetime,
        now: datetime,
        credentials: Metadata,
    ) -> PodcastFacts:
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        daily = await self._analytics.daily_downloads(
            podcast.id, today - timedelta(days=HISTORY_DAYS), today, credentials
        )
        countries = await self._analytics.country_shares(
            podcast.id, today - timedelta(days=30), today, credentials
        )
        horizon = min(max((end - start).days, 1), 90) if end > start else 0
        forecast = (
            await self._analytics.forecast_downloads(podcast.id, horizon, credentials)
            if horizon
            else 0.0
        )
        basis = "forecast"
        if forecast is None:
            # Too little history to forecast: the last 30 days' daily average carried on.
            forecast = sum(daily[-30:]) / 30 * horizon
            basis = "the last 30 days' pace"
        episodes = [
            e
            for e in await self._catalog.episodes(podcast.id, credentials)
            if e.publish_at is not None
        ]
        slots = [s for e in episodes for s in e.slots if not positions or s.position in positions]
        async with self._db.tenant_transaction(tenant_id) as conn:
            held = (
                await repo.held_slots(conn, [s.id for s in slots], start, end) if slots else set()
            )
            competitor = await repo.competitor_in_podcast(conn, podcast.id, sponsor, start, end)
        return PodcastFacts(
            podcast_id=podcast.id,
            title=podcast.title,
            categories=podcast.categories,
            keywords=podcast.keywords,
            explicit=podcast.explicit or any(e.explicit for e in episodes),
            daily_downloads=tuple(daily),
            episode_count=podcast.episode_count,
            country_downloads=countries,
            forecast_downloads=forecast,
            forecast_basis=basis,
            slot_count=len(slots),
            free_slot_count=len([s for s in slots if s.id not in held]),
            episodes_considered=len(episodes),
            competitor_booked=competitor,
        )


def _excluded(item: LineItem, podcast_id: uuid.UUID) -> bool:
    t = item.targeting
    return podcast_id in t.excluded_podcast_ids or bool(
        t.podcast_ids and podcast_id not in t.podcast_ids
    )
