"""Matchmaking: scores a podcast for a campaign from explained, weighted components.
Pure: the caller gathers the facts (catalog, analytics, bookings) into PodcastFacts;
the same facts always give the same score and explanation."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.campaign.domain import LineItem, Money, PricingModel, Sponsor, round_half_even


class MatchFactor(enum.IntEnum):
    """Values are podmesh.campaign.v1.MatchFactor."""

    CATEGORY_FIT = 1
    TOPIC_FIT = 2
    AUDIENCE_SIZE = 3
    AUDIENCE_GROWTH = 4
    GEO_FIT = 5
    APP_MIX = 6
    BRAND_SAFETY = 7
    PRICE = 8
    AVAILABILITY = 9


# The weights of one score sum to 1. App mix is not scored: analytics reports apps
# per podcast, but which apps suit which ad type is a judgement no input here makes.
WEIGHTS: Mapping[MatchFactor, float] = {
    MatchFactor.CATEGORY_FIT: 0.25,
    MatchFactor.TOPIC_FIT: 0.15,
    MatchFactor.AUDIENCE_SIZE: 0.20,
    MatchFactor.AUDIENCE_GROWTH: 0.10,
    MatchFactor.GEO_FIT: 0.10,
    MatchFactor.BRAND_SAFETY: 0.10,
    MatchFactor.PRICE: 0.05,
    MatchFactor.AVAILABILITY: 0.05,
}

# IAB Tech Lab Content Taxonomy tier-1 ids -> the Apple Podcasts category they mean,
# so a sponsor's IAB categories can be compared with a podcast's Apple categories.
IAB_TO_APPLE: Mapping[str, str] = {
    "42": "Arts",
    "52": "Business",
    "123": "Business",
    "132": "Education",
    "186": "Kids & Family",
    "201": "Arts",
    "210": "Arts",
    "223": "Health & Fitness",
    "239": "Leisure",
    "274": "Leisure",
    "286": "Health & Fitness",
    "324": "TV & Film",
    "338": "Music",
    "379": "News",
    "391": "Business",
    "453": "Society & Culture",
    "464": "Business",
    "483": "Sports",
    "552": "Arts",
    "596": "Technology",
    "640": "TV & Film",
    "653": "Society & Culture",
    "680": "Leisure",
}


@dataclass(frozen=True)
class PodcastFacts:
    podcast_id: uuid.UUID
    title: str
    categories: tuple[str, ...]
    keywords: tuple[tuple[str, float], ...]
    explicit: bool
    # Downloads per day over the last 90 days, oldest first.
    daily_downloads: tuple[int, ...]
    episode_count: int
    country_downloads: Mapping[str, int]
    forecast_downloads: float
    # "forecast", or how the downloads were estimated without one.
    forecast_basis: str
    # Slots at the asked positions in episodes the flight can use, and how many are free.
    slot_count: int
    free_slot_count: int
    episodes_considered: int
    competitor_booked: bool


@dataclass(frozen=True)
class Component:
    factor: MatchFactor
    value: float
    weight: float
    contribution: float
    explanation: str


@dataclass(frozen=True)
class Match:
    podcast_id: uuid.UUID
    podcast_title: str
    score: float
    components: tuple[Component, ...]
    estimated_impressions: int
    estimated_cost: Money | None
    available_slot_count: int


@dataclass(frozen=True)
class Ask:
    """What the campaign asks for: its sponsor, the line item(s) and the money left."""

    sponsor: Sponsor
    items: Sequence[LineItem]
    currency: str
    remaining_budget: int


def _top(categories: Sequence[str]) -> set[str]:
    return {c.split("/")[0].strip().lower() for c in categories if c.strip()}


def wanted_categories(ask: Ask) -> list[str]:
    wanted = {IAB_TO_APPLE[c] for c in ask.sponsor.iab_categories if c in IAB_TO_APPLE}
    for item in ask.items:
        wanted |= {c.split("/")[0].strip() for c in item.targeting.categories}
    return sorted(wanted, key=str.lower)


def _words(ask: Ask) -> set[str]:
    text = " ".join([ask.sponsor.competitive_category, *wanted_categories(ask)])
    return {w for w in text.lower().replace("&", " ").replace("/", " ").split() if len(w) > 2}


def _component(factor: MatchFactor, value: float, explanation: str) -> Component:
    value = min(max(value, 0.0), 1.0)
    weight = WEIGHTS[factor]
    return Component(factor, round(value, 4), weight, round(value * weight, 6), explanation)


def score(facts: PodcastFacts, ask: Ask, largest_audience: float) -> Match:
    components = []
    wanted = wanted_categories(ask)
    mine = _top(facts.categories)
    hits = [c for c in wanted if c.lower() in mine]
    if wanted:
        components.append(
            _component(
                MatchFactor.CATEGORY_FIT,
                len(hits) / len(wanted),
                f"{len(hits)} of the {len(wanted)} wanted categories match "
                f"({', '.join(hits) or 'none'})",
            )
        )
    else:
        components.append(
            _component(MatchFactor.CATEGORY_FIT, 0.5, "no categories wanted: neutral 0.5")
        )
    words = _words(ask)
    total_weight = sum(w for _, w in facts.keywords)
    matched = [(t, w) for t, w in facts.keywords if set(t.lower().split()) & words]
    topic = sum(w for _, w in matched) / total_weight if total_weight else 0.0
    components.append(
        _component(
            MatchFactor.TOPIC_FIT,
            topic,
            f"{len(matched)} of {len(facts.keywords)} keywords match the sponsor's topics "
            f"({', '.join(t for t, _ in matched[:5]) or 'none'}), "
            f"{topic:.0%} of the keyword weight",
        )
    )
    recent = sum(facts.daily_downloads[-30:])
    per_episode = recent / max(facts.episode_count, 1)
    components.append(
        _component(
            MatchFactor.AUDIENCE_SIZE,
            per_episode / largest_audience if largest_audience else 0.0,
            f"{recent} downloads in the last 30 days over {facts.episode_count} episodes: "
            f"{per_episode:.1f} per episode against the tenant's best {largest_audience:.1f}",
        )
    )
    half = len(facts.daily_downloads) // 2
    earlier = sum(facts.daily_downloads[:half])
    later = sum(facts.daily_downloads[half:])
    growth = (later - earlier) / earlier if earlier else (1.0 if later else 0.0)
    components.append(
        _component(
            MatchFactor.AUDIENCE_GROWTH,
            0.5 + growth / 2,
            f"{later} downloads in the last {len(facts.daily_downloads) - half} days against "
            f"{earlier} in the {half} before: {growth:+.0%}",
        )
    )
    countries = sorted({c for item in ask.items for c in item.targeting.country_codes})
    all_downloads = sum(facts.country_downloads.values())
    if countries:
        targeted = sum(facts.country_downloads.get(c, 0) for c in countries)
        share = targeted / all_downloads if all_downloads else 0.0
        components.append(
            _component(
                MatchFactor.GEO_FIT,
                share,
                f"{targeted} of {all_downloads} recent downloads from {', '.join(countries)}: "
                f"{share:.0%}",
            )
        )
    else:
        components.append(_component(MatchFactor.GEO_FIT, 1.0, "no countries targeted"))
    excludes_explicit = any(item.targeting.exclude_explicit for item in ask.items)
    safety, reasons = 1.0, []
    if facts.explicit:
        safety -= 1.0 if excludes_explicit else 0.5
        reasons.append(
            "explicit" + (" and the line item excludes explicit" if excludes_explicit else "")
        )
    if facts.competitor_booked:
        safety -= 0.5
        reasons.append(
            f"a competitor in {ask.sponsor.competitive_category!r} is booked over the flight"
        )
    components.append(
        _component(
            MatchFactor.BRAND_SAFETY,
            safety,
            "; ".join(reasons) if reasons else "not explicit, no competitor booked",
        )
    )
    free, episodes = facts.free_slot_count, max(facts.episodes_considered, 1)
    # The ad server inserts a country-targeted ad only for listeners in those countries:
    # when every line item is so targeted, only their share of the downloads is avails.
    geo_share = 1.0
    if ask.items and all(item.targeting.country_codes for item in ask.items):
        targeted = sum(facts.country_downloads.get(c, 0) for c in countries)
        geo_share = targeted / all_downloads if all_downloads else 0.0
    impressions = round(facts.forecast_downloads * free / episodes * geo_share)
    cost = estimated_cost(ask, impressions)
    if cost is None:
        components.append(
            _component(
                MatchFactor.PRICE, 0.5, "CPA: cost depends on attributed purchases; neutral 0.5"
            )
        )
    else:
        value = min(ask.remaining_budget / cost, 1.0) if cost else 1.0
        components.append(
            _component(
                MatchFactor.PRICE,
                value,
                f"estimated cost {cost} {ask.currency} minor units against "
                f"{ask.remaining_budget} of budget left",
            )
        )
    components.append(
        _component(
            MatchFactor.AVAILABILITY,
            free / facts.slot_count if facts.slot_count else 0.0,
            f"{free} of {facts.slot_count} slots free over the flight in "
            f"{facts.episodes_considered} episodes; "
            f"{facts.forecast_downloads:.0f} downloads expected by {facts.forecast_basis}"
            + (f", {geo_share:.0%} of them from the targeted countries" if geo_share < 1 else ""),
        )
    )
    ordered = tuple(sorted(components, key=lambda c: (-c.contribution, int(c.factor))))
    return Match(
        podcast_id=facts.podcast_id,
        podcast_title=facts.title,
        score=round(sum(c.contribution for c in components), 6),
        components=ordered,
        estimated_impressions=impressions,
        estimated_cost=Money(ask.currency, cost) if cost is not None else None,
        available_slot_count=free,
    )


def estimated_cost(ask: Ask, impressions: int) -> int | None:
    """At the line items' rates: CPM on the impressions, flat fees whole; None when
    every line item is CPA."""
    priced = [i for i in ask.items if i.pricing_model is not PricingModel.CPA and i.rate]
    if not priced:
        return None if ask.items else 0
    cost = 0
    for item in priced:
        assert item.rate is not None
        if item.pricing_model is PricingModel.CPM:
            cost += round_half_even(impressions * item.rate.minor_units, 1000 * len(priced))
        else:
            cost += item.rate.minor_units
    return cost


def rank(matches: Sequence[Match]) -> list[Match]:
    """Best score first; ties by podcast id, so the order never varies."""
    return sorted(matches, key=lambda m: (-m.score, str(m.podcast_id)))
