"""Pacing arithmetic: the goal prorated along a pacing curve, pace ratio and status,
the 7-day-rate projection, spend per pricing model and daily deliveries. Pure
functions of the line item, its deliveries and the moment asked about."""

from __future__ import annotations

import enum
import functools
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from services.campaign.domain import (
    LineItem,
    Money,
    PacingStrategy,
    PricingModel,
    round_half_even,
)
from services.shared.single_flight import SingleFlight

ON_TRACK_LOW = 0.9
ON_TRACK_HIGH = 1.1
PROJECTION_DAYS = 7
CPA_SPEND_NOTE = (
    "CPA spend is attributed purchases x rate, which depends on the attribution model: "
    "the campaign's attribution report (GetCampaignReport) gives it"
)


def delivery_note(item: LineItem) -> str:
    """Why the line item's delivered impressions may exceed what its ad got: Podmesh is
    not the ad server, and counts ads delivered per slot, not per country or listener."""
    applied = []
    if item.targeting.country_codes:
        applied.append(f"country targeting ({', '.join(item.targeting.country_codes)})")
    if item.frequency_cap_max:
        applied.append(
            f"a frequency cap ({item.frequency_cap_max} per listener every "
            f"{item.frequency_cap_days} days)"
        )
    if not applied:
        return ""
    return (
        f"the ad server applies {' and '.join(applied)} at insertion; delivered impressions "
        "count every download of the booked slots, so they are at most what the ad got"
    )


class PacingStatus(enum.IntEnum):
    """Values are podmesh.campaign.v1.PacingStatus."""

    NOT_STARTED = 1
    ON_TRACK = 2
    UNDER_DELIVERING = 3
    OVER_DELIVERING = 4
    GOAL_MET = 5
    GOAL_MISSED = 6


class DailyDelivery(NamedTuple):
    """A tuple: a campaign's pacing makes one per line item per day of its flight, and
    a frozen dataclass took several times as long to make."""

    day_start: datetime
    delivered: int
    expected_cumulative: int


@dataclass(frozen=True)
class Pacing:
    line_item_id: uuid.UUID | None
    campaign_id: uuid.UUID
    flight_start: datetime
    flight_end: datetime
    as_of: datetime
    elapsed_fraction: float
    goal: int
    delivered: int
    expected: int
    pace_ratio: float
    status: PacingStatus
    projected: int
    spend: Money | None
    daily: list[DailyDelivery] = field(default_factory=list)
    shortfall: int = 0
    makegood_delivered: int = 0
    spend_note: str = ""
    delivery_note: str = ""


def elapsed_fraction(start: datetime, end: datetime, at: datetime) -> float:
    if at <= start:
        return 0.0
    if at >= end:
        return 1.0
    return (at - start) / (end - start)


def curve(strategy: PacingStrategy, fraction: float) -> float:
    """Share of the goal expected by `fraction` of the flight. Front-loaded reaches two
    thirds at half way, then the last third over the second half; ASAP is judged
    against the even curve, as the contract says."""
    if strategy is PacingStrategy.FRONT_LOADED:
        if fraction <= 0.5:
            return fraction * 4 / 3
        return 1 / 3 + fraction * 2 / 3
    return fraction


def expected_at(
    goal: int, strategy: PacingStrategy, start: datetime, end: datetime, at: datetime
) -> int:
    return round(goal * curve(strategy, elapsed_fraction(start, end, at)))


_MICROSECOND = timedelta(microseconds=1)


def expected_series(
    goal: int, strategy: PacingStrategy, start: datetime, end: datetime, ats: Sequence[datetime]
) -> list[int]:
    """expected_at at each of `ats`, the same integers in one loop: a campaign's pacing
    asks for every line item on every day of its flight, and three calls per value were
    most of its CPU. Whole microseconds divided as expected_at's timedeltas are."""
    span = (end - start) // _MICROSECOND
    front_loaded = strategy is PacingStrategy.FRONT_LOADED
    out = []
    for at in ats:
        if at <= start:
            fraction = 0.0
        elif at >= end:
            fraction = 1.0
        else:
            fraction = ((at - start) // _MICROSECOND) / span
        if front_loaded:
            fraction = fraction * 4 / 3 if fraction <= 0.5 else 1 / 3 + fraction * 2 / 3
        out.append(round(goal * fraction))
    return out


def status_of(
    start: datetime,
    end: datetime,
    as_of: datetime,
    goal: int,
    cap: int,
    delivered: int,
    expected: int,
) -> tuple[PacingStatus, float]:
    ratio = delivered / expected if expected else 0.0
    if as_of < start:
        return PacingStatus.NOT_STARTED, ratio
    if as_of >= end:
        return (PacingStatus.GOAL_MET if delivered >= goal else PacingStatus.GOAL_MISSED), ratio
    if cap and delivered >= cap:
        return PacingStatus.OVER_DELIVERING, ratio
    if not expected:
        return (
            PacingStatus.OVER_DELIVERING if delivered and goal else PacingStatus.ON_TRACK
        ), ratio
    if ratio < ON_TRACK_LOW:
        return PacingStatus.UNDER_DELIVERING, ratio
    if ratio > ON_TRACK_HIGH:
        return PacingStatus.OVER_DELIVERING, ratio
    return PacingStatus.ON_TRACK, ratio


def flight_days(
    start: datetime, end: datetime, as_of: datetime, zone: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    """(start, end) of the local days from the flight's first to the one holding the
    last instant before min(as_of, end), in UTC: comparing datetimes of a ZoneInfo
    zone asks the zone for offsets each time, which at a day per line item per day of
    flight is most of a campaign's pacing."""
    until = min(as_of, end)
    if until <= start:
        return []
    first = start.astimezone(zone).date()
    last = (until - timedelta(microseconds=1)).astimezone(zone).date()
    return list(_local_days(first, last, zone))


@functools.lru_cache(maxsize=256)
def _local_days(first: date, last: date, zone: ZoneInfo) -> tuple[tuple[datetime, datetime], ...]:
    """A campaign's line items mostly share their flight: its days are made once."""
    starts = []
    day = first
    while day <= last + timedelta(days=1):
        starts.append(datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC))
        day += timedelta(days=1)
    return tuple(itertools.pairwise(starts))


def spend_of(
    item: LineItem, delivered: int, start: datetime, end: datetime, as_of: datetime
) -> tuple[Money | None, str]:
    assert item.rate is not None
    currency = item.rate.currency_code
    if item.pricing_model is PricingModel.CPM:
        billable = min(delivered, item.impression_cap) if item.impression_cap else delivered
        return Money(currency, round_half_even(billable * item.rate.minor_units, 1000)), ""
    if item.pricing_model is PricingModel.FLAT:
        total = int((end - start).total_seconds() * 1_000_000)
        done = int((min(max(as_of, start), end) - start).total_seconds() * 1_000_000)
        return Money(currency, round_half_even(item.rate.minor_units * done, total)), ""
    return None, CPA_SPEND_NOTE


def line_item_pacing(
    item: LineItem,
    by_day: Mapping[datetime, int],
    makegood_delivered: int,
    as_of: datetime,
    zone: ZoneInfo,
) -> Pacing:
    """`by_day`: the line item's own placements' deliveries per local day start."""
    assert item.flight_start is not None
    assert item.flight_end is not None
    start, end = item.flight_start, item.flight_end
    goal, strategy = item.impression_goal, item.pacing_strategy
    delivered = sum(by_day.values())
    expected = expected_at(goal, strategy, start, end, as_of)
    status, ratio = status_of(start, end, as_of, goal, item.impression_cap, delivered, expected)
    local = {k.astimezone(UTC): v for k, v in by_day.items()}
    days = flight_days(start, end, as_of, zone)
    expected_by_day = expected_series(goal, strategy, start, end, [min(e, end) for _, e in days])
    daily = [
        DailyDelivery(day, local.get(day, 0), cumulative)
        for (day, _), cumulative in zip(days, expected_by_day, strict=True)
    ]
    spend, note = spend_of(item, delivered, start, end, as_of)
    shortfall = max(goal - delivered - makegood_delivered, 0) if as_of >= end else 0
    return Pacing(
        line_item_id=item.id,
        campaign_id=item.campaign_id,
        flight_start=start,
        flight_end=end,
        as_of=as_of,
        elapsed_fraction=elapsed_fraction(start, end, as_of),
        goal=goal,
        delivered=delivered,
        expected=expected,
        pace_ratio=ratio,
        status=status,
        projected=project(daily, delivered, start, end, as_of),
        spend=spend,
        daily=daily,
        shortfall=shortfall,
        makegood_delivered=makegood_delivered,
        spend_note=note,
        delivery_note=delivery_note(item),
    )


def project(
    daily: Sequence[DailyDelivery], delivered: int, start: datetime, end: datetime, as_of: datetime
) -> int:
    """Delivered by the end of the flight at the rate of the last 7 local days (the
    current, partial one included)."""
    if as_of >= end or as_of <= start or not daily:
        return delivered
    recent = daily[-PROJECTION_DAYS:]
    since = max(recent[0].day_start, start)
    seconds = (as_of - since).total_seconds()
    if seconds <= 0:
        return delivered
    rate = sum(d.delivered for d in recent) / seconds
    return delivered + round(rate * (end - as_of).total_seconds())


def campaign_pacing(
    campaign_id: uuid.UUID,
    start: datetime,
    end: datetime,
    currency: str,
    items: Sequence[tuple[LineItem, Pacing]],
    as_of: datetime,
    zone: ZoneInfo,
) -> Pacing:
    """The campaign's totals over its line items, on the campaign's flight."""
    goal = sum(p.goal for _, p in items)
    delivered = sum(p.delivered for _, p in items)
    expected = sum(p.expected for _, p in items)
    cap = 0
    status, ratio = status_of(start, end, as_of, goal, cap, delivered, expected)
    by_day: dict[datetime, int] = {}
    for _, p in items:
        for d in p.daily:
            by_day[d.day_start] = by_day.get(d.day_start, 0) + d.delivered
    days = flight_days(start, end, as_of, zone)
    ends = [e for _, e in days]
    cumulative = [0] * len(days)
    # Line items mostly share their flight, goal and strategy: each such series once.
    series: dict[tuple[int, PacingStrategy, datetime, datetime], list[int]] = {}
    for li, p in items:
        terms = (li.impression_goal, li.pacing_strategy, p.flight_start, p.flight_end)
        values = series.get(terms)
        if values is None:
            values = series[terms] = expected_series(*terms, [min(e, p.flight_end) for e in ends])
        cumulative = [a + b for a, b in zip(cumulative, values, strict=True)]
    daily = [
        DailyDelivery(day, by_day.get(day, 0), expected)
        for (day, _), expected in zip(days, cumulative, strict=True)
    ]
    priced = [p.spend for _, p in items if p.spend is not None]
    notes = {p.spend_note for _, p in items if p.spend_note}
    return Pacing(
        line_item_id=None,
        campaign_id=campaign_id,
        flight_start=start,
        flight_end=end,
        as_of=as_of,
        elapsed_fraction=elapsed_fraction(start, end, as_of),
        goal=goal,
        delivered=delivered,
        expected=expected,
        pace_ratio=ratio,
        status=status,
        projected=sum(p.projected for _, p in items),
        spend=Money(currency, sum(m.minor_units for m in priced)),
        daily=daily,
        shortfall=sum(p.shortfall for _, p in items),
        makegood_delivered=sum(p.makegood_delivered for _, p in items),
        spend_note=("spend leaves out the CPA line items: " + CPA_SPEND_NOTE if notes else ""),
        delivery_note=(
            "some line items' delivered impressions are at most what their ads got: see theirs"
            if any(p.delivery_note for _, p in items)
            else ""
        ),
    )


@dataclass(frozen=True)
class PacingReport:
    pacing: Pacing
    line_items: list[Pacing]


class PacingCache:
    """Pacing answers kept for `ttl_s` (0: never), per tenant and line item or campaign.

    Dashboards ask for one campaign's pacing over and over, and each answer reads every
    placement's deliveries. An answer says until when its counts are complete
    (as_of_time), so reusing it for a few seconds is disclosed; a change in the tenant's
    campaigns through this replica drops the tenant's answers at once (another replica's
    change shows within ttl_s).
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, int, PacingReport]] = {}
        self._generations: dict[uuid.UUID, int] = {}
        self._flights: SingleFlight[PacingReport] = SingleFlight()

    def generation(self, tenant_id: uuid.UUID) -> int:
        return self._generations.get(tenant_id, 0)

    def forget(self, tenant_id: uuid.UUID) -> None:
        self._generations[tenant_id] = self.generation(tenant_id) + 1

    def get(self, tenant_id: uuid.UUID, key: uuid.UUID) -> PacingReport | None:
        entry = self._entries.get((tenant_id, key))
        if entry is None:
            return None
        expires, generation, report = entry
        if expires < time.monotonic() or generation != self.generation(tenant_id):
            del self._entries[(tenant_id, key)]
            return None
        return report

    async def get_or_make(
        self,
        tenant_id: uuid.UUID,
        key: uuid.UUID,
        make: Callable[[], Awaitable[PacingReport]],
    ) -> PacingReport:
        """The kept answer, or one made now. When an answer expires under a dashboard's
        load, every caller in flight missed it and made its own, each a whole campaign's
        pacing: callers that miss while one is being made (for the same tenant
        generation) wait for it instead. Not with the cache off, where no answer is
        reused. A caller whose shared attempt failed makes its own: the failure may be
        the other caller's credential."""
        cached = self.get(tenant_id, key)
        if cached is not None:
            return cached
        generation = self.generation(tenant_id)
        if self._ttl_s <= 0:
            return await make()
        flight = (tenant_id, key, generation)
        if self._flights.running(flight):
            try:
                return await self._flights.run(flight, make)
            except Exception:
                return await make()
        report = await self._flights.run(flight, make)
        self.put(tenant_id, key, generation, report)
        return report

    def put(
        self, tenant_id: uuid.UUID, key: uuid.UUID, generation: int, report: PacingReport
    ) -> None:
        """Keeps an answer computed while the tenant was at `generation`; one that a change
        overtook meanwhile is not kept."""
        if self._ttl_s <= 0 or generation != self.generation(tenant_id):
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._entries[(tenant_id, key)] = (time.monotonic() + self._ttl_s, generation, report)
