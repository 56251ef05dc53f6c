"""Country targeting and frequency caps, which the ad server applies at insertion: avails
count only the targeted countries' share of downloads, and pacing says when delivered
impressions (per slot, not per country or listener) may exceed what the ad got."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.campaign.domain import (
    AdType,
    CampaignState,
    LineItem,
    Money,
    PricingModel,
    Sponsor,
    Targeting,
)
from services.campaign.matching import Ask, Match, MatchFactor, PodcastFacts, score
from services.campaign.pacing import campaign_pacing, line_item_pacing

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=10)


def item(**fields: object) -> LineItem:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "campaign_id": uuid.uuid4(),
        "display_name": "x",
        "ad_type": AdType.DYNAMIC,
        "pricing_model": PricingModel.CPM,
        "rate": Money("USD", 2500),
        "state": CampaignState.ACTIVE,
        "impression_goal": 10_000,
        "flight_start": START,
        "flight_end": END,
    }
    values.update(fields)
    return LineItem(**values)  # type: ignore[arg-type]


def facts() -> PodcastFacts:
    return PodcastFacts(
        podcast_id=uuid.uuid4(),
        title="Show",
        categories=("Business",),
        keywords=(),
        explicit=False,
        daily_downloads=(100,) * 90,
        episode_count=10,
        country_downloads={"US": 600, "CA": 100, "DE": 300},
        forecast_downloads=10_000.0,
        forecast_basis="forecast",
        slot_count=4,
        free_slot_count=2,
        episodes_considered=4,
        competitor_booked=False,
    )


def ask(*items: LineItem) -> Ask:
    return Ask(Sponsor(uuid.uuid4(), "Acme"), items, "USD", 10**9)


def availability(match: Match) -> str:
    return next(c.explanation for c in match.components if c.factor is MatchFactor.AVAILABILITY)


def test_avails_count_only_the_targeted_countries() -> None:
    untargeted = score(facts(), ask(item()), 100.0)
    targeted = score(facts(), ask(item(targeting=Targeting(country_codes=("US", "CA")))), 100.0)
    # 10,000 downloads x 2 free slots over 4 episodes; 700 of 1,000 downloads from US, CA.
    assert untargeted.estimated_impressions == 5_000
    assert targeted.estimated_impressions == 3_500
    assert targeted.estimated_cost == Money("USD", 3_500 * 2500 // 1000)
    assert availability(targeted).endswith(", 70% of them from the targeted countries")
    assert "countries" not in availability(untargeted)


def test_one_untargeted_line_item_keeps_every_country() -> None:
    mixed = ask(item(targeting=Targeting(country_codes=("US",))), item())
    assert score(facts(), mixed, 100.0).estimated_impressions == 5_000


def test_pacing_says_when_the_ad_server_narrows_delivery() -> None:
    zone = ZoneInfo("UTC")
    as_of = START + timedelta(days=5)
    day = {START: 100}
    plain = line_item_pacing(item(), day, 0, as_of, zone)
    geo = line_item_pacing(item(targeting=Targeting(country_codes=("US",))), day, 0, as_of, zone)
    capped = line_item_pacing(item(frequency_cap_max=3, frequency_cap_days=7), day, 0, as_of, zone)
    assert plain.delivery_note == ""
    assert "country targeting (US)" in geo.delivery_note
    assert "a frequency cap (3 per listener every 7 days)" in capped.delivery_note
    # The counts themselves are what was delivered: no estimate replaces them.
    assert plain.delivered == geo.delivered == capped.delivered == 100
    campaign_id = uuid.uuid4()
    both = campaign_pacing(
        campaign_id, START, END, "USD", [(item(), plain), (item(), geo)], as_of, zone
    )
    alone = campaign_pacing(campaign_id, START, END, "USD", [(item(), plain)], as_of, zone)
    assert both.delivery_note
    assert alone.delivery_note == ""
