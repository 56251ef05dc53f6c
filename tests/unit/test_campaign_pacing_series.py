"""Pacing's expected impressions computed for a whole flight at once (expected_series,
what campaign and line item pacing use) are exactly what expected_at gives per instant."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.campaign.domain import AdType, LineItem, Money, PacingStrategy, PricingModel
from services.campaign.pacing import (
    campaign_pacing,
    expected_at,
    expected_series,
    flight_days,
    line_item_pacing,
)

START = datetime(2026, 3, 1, 5, 17, 3, 123457, tzinfo=UTC)


def test_the_series_is_expected_at_of_each_instant() -> None:
    rng = random.Random(7)
    for _ in range(300):
        start = START + timedelta(microseconds=rng.randrange(10**12))
        end = start + timedelta(microseconds=rng.randrange(1, 200 * 86_400 * 10**6))
        strategy = rng.choice(list(PacingStrategy))
        goal = rng.choice([0, 1, 7, 999, 100_000, 10**9 + 7])
        span = (end - start) // timedelta(microseconds=1)
        ats = [
            start + timedelta(microseconds=rng.randrange(-(10**11), span + 10**11))
            for _ in range(20)
        ] + [start, end, end - timedelta(microseconds=1), start + (end - start) / 2]
        assert expected_series(goal, strategy, start, end, ats) == [
            expected_at(goal, strategy, start, end, at) for at in ats
        ]


def item(goal: int, strategy: PacingStrategy, start: datetime, end: datetime) -> LineItem:
    return LineItem(
        id=uuid.uuid4(),
        campaign_id=uuid.UUID(int=1),
        display_name="Line",
        ad_type=AdType.DYNAMIC,
        pricing_model=PricingModel.CPM,
        rate=Money("USD", 2500),
        impression_goal=goal,
        pacing_strategy=strategy,
        flight_start=start,
        flight_end=end,
    )


def test_campaign_days_sum_each_line_items_expected_at() -> None:
    zone = ZoneInfo("America/New_York")
    end = START + timedelta(days=90)
    as_of = START + timedelta(days=60, hours=3)
    items = [
        item(100_000, PacingStrategy.EVEN, START, end),
        item(100_000, PacingStrategy.EVEN, START, end),
        item(33_333, PacingStrategy.FRONT_LOADED, START + timedelta(days=10), end),
        item(5_000, PacingStrategy.ASAP, START, START + timedelta(days=20, minutes=7)),
    ]
    paced = [(li, line_item_pacing(li, {}, 0, as_of, zone)) for li in items]
    for li, p in paced:
        assert li.flight_start is not None
        assert li.flight_end is not None
        assert [d.expected_cumulative for d in p.daily] == [
            expected_at(
                li.impression_goal,
                li.pacing_strategy,
                li.flight_start,
                li.flight_end,
                min(day_end, li.flight_end),
            )
            for _, day_end in flight_days(li.flight_start, li.flight_end, as_of, zone)
        ]
    total = campaign_pacing(uuid.UUID(int=1), START, end, "USD", paced, as_of, zone)
    assert len(total.daily) == 61
    assert [d.expected_cumulative for d in total.daily] == [
        sum(
            expected_at(
                li.impression_goal,
                li.pacing_strategy,
                p.flight_start,
                p.flight_end,
                min(day_end, p.flight_end),
            )
            for li, p in paced
        )
        for _, day_end in flight_days(START, end, as_of, zone)
    ]
