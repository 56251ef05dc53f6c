"""Pacing arithmetic without a stack: curves, statuses, projection, spend, days."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.campaign.domain import (
    AdType,
    CampaignState,
    LineItem,
    Money,
    PacingStrategy,
    PricingModel,
)
from services.campaign.pacing import (
    CPA_SPEND_NOTE,
    PacingCache,
    PacingReport,
    PacingStatus,
    curve,
    flight_days,
    line_item_pacing,
    status_of,
)

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


@pytest.mark.parametrize(
    ("strategy", "fraction", "share"),
    [
        (PacingStrategy.EVEN, 0.25, 0.25),
        (PacingStrategy.ASAP, 0.25, 0.25),
        (PacingStrategy.FRONT_LOADED, 0.5, 2 / 3),
        (PacingStrategy.FRONT_LOADED, 0.25, 1 / 3),
        (PacingStrategy.FRONT_LOADED, 0.75, 5 / 6),
        (PacingStrategy.FRONT_LOADED, 1.0, 1.0),
    ],
)
def test_curves(strategy: PacingStrategy, fraction: float, share: float) -> None:
    assert curve(strategy, fraction) == pytest.approx(share)


@pytest.mark.parametrize(
    ("as_of", "delivered", "expected", "status"),
    [
        (START - timedelta(hours=1), 0, 0, PacingStatus.NOT_STARTED),
        (START + timedelta(days=5), 4500, 5000, PacingStatus.ON_TRACK),
        (START + timedelta(days=5), 4499, 5000, PacingStatus.UNDER_DELIVERING),
        (START + timedelta(days=5), 5500, 5000, PacingStatus.ON_TRACK),
        (START + timedelta(days=5), 5501, 5000, PacingStatus.OVER_DELIVERING),
        (END, 10_000, 10_000, PacingStatus.GOAL_MET),
        (END, 9_999, 10_000, PacingStatus.GOAL_MISSED),
    ],
)
def test_statuses(as_of: datetime, delivered: int, expected: int, status: PacingStatus) -> None:
    assert status_of(START, END, as_of, 10_000, 0, delivered, expected)[0] is status


def test_the_cap_reached_is_over_delivery() -> None:
    assert status_of(START, END, START + timedelta(days=1), 10_000, 900, 900, 1000)[0] is (
        PacingStatus.OVER_DELIVERING
    )


def test_line_item_pacing_projection_spend_and_days() -> None:
    as_of = START + timedelta(days=4)
    by_day = {START + timedelta(days=d): 700 for d in range(4)}
    paced = line_item_pacing(item(), by_day, 0, as_of, ZoneInfo("UTC"))
    assert paced.delivered == 2800
    assert paced.expected == 4000
    assert paced.pace_ratio == pytest.approx(0.7)
    assert paced.status is PacingStatus.UNDER_DELIVERING
    # 700 a day for the 6 days left.
    assert paced.projected == 2800 + 6 * 700
    assert paced.spend == Money("USD", 7000)
    assert [d.delivered for d in paced.daily] == [700] * 4
    assert [d.expected_cumulative for d in paced.daily] == [1000, 2000, 3000, 4000]


def test_flat_fee_is_prorated_and_cpa_awaits_attribution() -> None:
    as_of = START + timedelta(days=2, hours=12)
    flat = line_item_pacing(
        item(pricing_model=PricingModel.FLAT, rate=Money("USD", 100_001)),
        {},
        0,
        as_of,
        ZoneInfo("UTC"),
    )
    # A quarter of 100,001 is 25,000.25.
    assert flat.spend == Money("USD", 25_000)
    cpa = line_item_pacing(item(pricing_model=PricingModel.CPA), {}, 0, as_of, ZoneInfo("UTC"))
    assert cpa.spend is None
    assert cpa.spend_note == CPA_SPEND_NOTE


def test_days_follow_the_tenant_zone() -> None:
    zone = ZoneInfo("America/New_York")
    days = flight_days(START, END, START + timedelta(days=1), zone)
    # 00:00 UTC is the evening before in New York: two local days so far, each from
    # local midnight to the next.
    assert [(s.astimezone(zone).isoformat(), e.astimezone(zone).isoformat()) for s, e in days] == [
        ("2026-02-28T00:00:00-05:00", "2026-03-01T00:00:00-05:00"),
        ("2026-03-01T00:00:00-05:00", "2026-03-02T00:00:00-05:00"),
    ]


def test_pacing_answers_are_reused_until_the_tenant_changes() -> None:
    tenant, other, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    report = PacingReport(line_item_pacing(item(), {}, 0, START, ZoneInfo("UTC")), [])
    cache = PacingCache(ttl_s=60)
    cache.put(tenant, key, cache.generation(tenant), report)
    assert cache.get(tenant, key) is report
    assert cache.get(other, key) is None
    cache.forget(other)
    assert cache.get(tenant, key) is report
    cache.forget(tenant)
    assert cache.get(tenant, key) is None
    # An answer computed before a change is not kept after it.
    before = cache.generation(tenant)
    cache.forget(tenant)
    cache.put(tenant, key, before, report)
    assert cache.get(tenant, key) is None
    off = PacingCache(ttl_s=0)
    off.put(tenant, key, off.generation(tenant), report)
    assert off.get(tenant, key) is None
