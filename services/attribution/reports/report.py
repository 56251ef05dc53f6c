"""A finished report: the credited units of each model turned into the contract's metrics,
with spend from pacing and the ratios derived from it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from services.attribution.models import Model
from services.attribution.peers import LineItemFacts
from services.attribution.reports.domain import (
    GRID,
    LEADS,
    PURCHASES,
    RESPONSE_DAYS,
    REVENUE,
    SLOTS,
    VISITORS,
    Breakdown,
    Credited,
    Reach,
    Unattributed,
    divide_money,
    round_half_even,
    split_spend,
    summed,
)

PRICING_CPA = 3


@dataclass(frozen=True)
class Window:
    days: int
    visitors: float
    leads: float
    purchases: float
    revenue_minor: int


@dataclass(frozen=True)
class Metrics:
    impressions: int
    households: int
    frequency: float
    visitors: float
    visit_rate: float
    leads: float
    purchases: float
    revenue_minor: int
    spend_minor: int
    cost_per_visitor_minor: int | None
    cost_per_acquisition_minor: int | None
    return_on_ad_spend: float
    windows: tuple[Window, ...]
    promo_code_purchases: int


@dataclass(frozen=True)
class Row:
    dimension_value: str
    display_name: str
    metrics: Metrics


@dataclass(frozen=True)
class LiftResult:
    """The lift as a serialized podmesh.attribution.v1.Lift, or why there is none."""

    message: bytes | None
    unavailable_reason: str


@dataclass(frozen=True)
class CampaignReport:
    campaign_id: uuid.UUID
    model: Model
    window_days: int
    start: datetime
    end: datetime
    currency: str
    totals: Metrics
    breakdown: Breakdown
    rows: tuple[Row, ...]
    unattributed: Unattributed
    data_end: datetime
    lift: LiftResult


@dataclass(frozen=True)
class Core:
    """What the cache keeps for one period: reach, dimensions, promo codes, unattributed
    conversions and each model's credited units. Spend and names are added per call."""

    line_items: list[uuid.UUID]
    podcasts: list[uuid.UUID]
    total: Reach
    by_line_item: dict[int, Reach]
    by_podcast: dict[int, Reach]
    impressions_by_pair: dict[tuple[int, int], int]
    promo_purchases: dict[str, int]
    unattributed: Unattributed
    data_end: datetime
    lift: LiftResult
    credited: dict[Model, Credited]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def metrics(
    reach: Reach, slots: Sequence[int], spend_minor: int, promo_code_purchases: int
) -> Metrics:
    visitors = summed(slots, VISITORS) / GRID
    purchases_units = summed(slots, PURCHASES)
    revenue = summed(slots, REVENUE)
    windows = tuple(
        Window(
            days=days,
            visitors=summed(slots, VISITORS, b) / GRID,
            leads=summed(slots, LEADS, b) / GRID,
            purchases=summed(slots, PURCHASES, b) / GRID,
            revenue_minor=summed(slots, REVENUE, b),
        )
        for b, days in enumerate(RESPONSE_DAYS)
    )
    return Metrics(
        impressions=reach.impressions,
        households=reach.households,
        frequency=_ratio(reach.impressions, reach.households),
        visitors=visitors,
        visit_rate=_ratio(visitors, reach.households),
        leads=summed(slots, LEADS) / GRID,
        purchases=purchases_units / GRID,
        revenue_minor=revenue,
        spend_minor=spend_minor,
        cost_per_visitor_minor=divide_money(spend_minor, summed(slots, VISITORS)),
        cost_per_acquisition_minor=divide_money(spend_minor, purchases_units),
        return_on_ad_spend=_ratio(revenue, spend_minor),
        windows=windows,
        promo_code_purchases=promo_code_purchases,
    )


def line_item_spend(
    core: Core,
    line_items: Sequence[LineItemFacts],
    pacing_spend: Mapping[uuid.UUID, int | None],
    campaign_model: Model,
) -> dict[uuid.UUID, int]:
    """Spend per line item as pacing reports it: impressions x CPM / 1,000 or the flat
    fee; for CPA line items, which pacing leaves to attribution, the purchases credited
    to the line item under the campaign's own model x the rate, half to even."""
    out: dict[uuid.UUID, int] = {}
    index = {li: i + 1 for i, li in enumerate(core.line_items)}
    credited = core.credited.get(campaign_model)
    for item in line_items:
        given = pacing_spend.get(item.id)
        if given is not None:
            out[item.id] = given
        elif item.pricing_model == PRICING_CPA and credited is not None and item.id in index:
            units = summed(credited.row(Breakdown.LINE_ITEM, index[item.id]), PURCHASES)
            out[item.id] = round_half_even(Fraction(units * item.rate_minor, GRID))
        else:
            out[item.id] = 0
    return out


def assemble(
    core: Core,
    model: Model,
    *,
    campaign_id: uuid.UUID,
    window_days: int,
    start: datetime,
    end: datetime,
    currency: str,
    breakdown: Breakdown,
    line_items: Sequence[LineItemFacts],
    spend: Mapping[uuid.UUID, int],
) -> CampaignReport:
    credited = core.credited[model]
    facts = {item.id: item for item in line_items}
    promo_by_line_item = {
        item.id: core.promo_purchases.get(item.promo_code.strip().upper(), 0)
        for item in line_items
        if item.promo_code.strip()
    }
    total_spend = sum(spend.values())
    totals = metrics(core.total, credited.total(), total_spend, sum(promo_by_line_item.values()))
    rows: list[Row] = []
    if breakdown is Breakdown.LINE_ITEM:
        index = {li: i + 1 for i, li in enumerate(core.line_items)}
        for li in dict.fromkeys([*core.line_items, *facts]):
            i = index.get(li, -1)
            rows.append(
                Row(
                    str(li),
                    facts[li].name if li in facts else "",
                    metrics(
                        core.by_line_item.get(i, Reach(0, 0)),
                        credited.row(breakdown, i) if i > 0 else [0] * SLOTS,
                        spend.get(li, 0),
                        promo_by_line_item.get(li, 0),
                    ),
                )
            )
    elif breakdown is Breakdown.PODCAST:
        podcast_spend: dict[int, int] = {}
        for i, li in enumerate(core.line_items, start=1):
            shares = split_spend(
                spend.get(li, 0),
                {pod: n for (item, pod), n in core.impressions_by_pair.items() if item == i},
            )
            for pod, minor in shares.items():
                podcast_spend[pod] = podcast_spend.get(pod, 0) + minor
        for pod in sorted(core.by_podcast):
            rows.append(
                Row(
                    str(core.podcasts[pod - 1]) if pod > 0 else "",
                    "",
                    metrics(
                        core.by_podcast[pod],
                        credited.row(breakdown, pod),
                        podcast_spend.get(pod, 0),
                        0,
                    ),
                )
            )
    rows.sort(key=lambda r: (-r.metrics.impressions, r.dimension_value))
    return CampaignReport(
        campaign_id=campaign_id,
        model=model,
        window_days=window_days,
        start=start,
        end=end,
        currency=currency,
        totals=totals,
        breakdown=breakdown,
        rows=tuple(rows),
        unattributed=core.unattributed,
        data_end=core.data_end,
        lift=core.lift,
    )
