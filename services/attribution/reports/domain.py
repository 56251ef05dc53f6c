"""A campaign report's numbers, from the rows the repository aggregated: pure, no SQL, no gRPC.

Credited counts are exact. Each credited event (a lead, a purchase, or a visitor's first
visit after an exposure) is worth GRID units, shared among its touches by the model's
exact credits with `allocate_minor` (largest remainder), so every touch holds a whole
number of units, rows are sums of whole numbers and add up to the totals exactly; a
count is reported as units ÷ GRID. Money is shared the same way in minor units.

Events whose touches have the same shape (channels, rows, days since exposure) get the
same credits under every model but time decay, so each shape is credited once and
multiplied by how often it occurs: a report costs per distinct shape, not per event,
except for time decay, whose credits depend on each touch's exact age.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from services.attribution.models import (
    DataDrivenWeights,
    Model,
    Path,
    Touchpoint,
    allocate_minor,
    credits,
    fit_markov,
    fit_shapley,
)

GRID = 10**9
DAY_S = 86_400.0
RESPONSE_DAYS = (1, 7, 30)
# Per touch: how many days after the exposure the event came, bucketed for the
# cumulative response windows; the last bucket is beyond the longest window.
_BUCKET_LIMITS = tuple(days * DAY_S for days in RESPONSE_DAYS)
_BUCKETS = len(RESPONSE_DAYS) + 1
# The credited metrics, per bucket, in one flat list per row: bucket * _METRICS + metric.
VISITORS, LEADS, PURCHASES, REVENUE = range(4)
_METRICS = 4
SLOTS = _BUCKETS * _METRICS


class EventKind(enum.IntEnum):
    """As podmesh.attribution.v1.SiteEventType: a visit is a page view."""

    VISIT = 1
    LEAD = 2
    PURCHASE = 3


class Breakdown(enum.IntEnum):
    NONE = 0
    LINE_ITEM = 1
    PODCAST = 2


@dataclass(frozen=True, slots=True)
class CreditedEvent:
    """An event with at least one touch: its touches' times, line items and podcasts as
    indexes into the report's dimension lists (podcast 0: unknown), in touch order."""

    kind: int
    time: float
    value_minor: int
    touch_times: tuple[float, ...]
    channels: tuple[int, ...]
    podcasts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reach:
    impressions: int
    households: int


@dataclass(frozen=True, slots=True)
class Unattributed:
    visitors: int = 0
    leads: int = 0
    purchases: int = 0
    revenue_minor: int = 0


@dataclass
class Inputs:
    """What the repository read for one report: dimension lists (index 1 is the first),
    reach, the credited events, the non-converting paths, promo codes, unattributed."""

    line_items: list[uuid.UUID]
    podcasts: list[uuid.UUID]
    total: Reach
    by_line_item: dict[int, Reach]
    by_podcast: dict[int, Reach]
    impressions_by_pair: dict[tuple[int, int], int]
    events: list[CreditedEvent]
    nonconverting: list[tuple[tuple[int, ...], int]]
    promo_purchases: dict[str, int]
    unattributed: Unattributed
    data_end: datetime


@dataclass
class Credited:
    """One model's credited metrics per (line item, podcast) pair, in SLOTS per pair."""

    model: Model
    pairs: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def row(self, breakdown: Breakdown, index: int) -> list[int]:
        out = [0] * SLOTS
        position = 0 if breakdown is Breakdown.LINE_ITEM else 1
        for pair, slots in self.pairs.items():
            if pair[position] == index:
                for i, units in enumerate(slots):
                    out[i] += units
        return out

    def total(self) -> list[int]:
        out = [0] * SLOTS
        for slots in self.pairs.values():
            for i, units in enumerate(slots):
                out[i] += units
        return out


def bucket_of(lag_s: float) -> int:
    for i, limit in enumerate(_BUCKET_LIMITS):
        if lag_s <= limit:
            return i
    return len(_BUCKET_LIMITS)


def metric_of(kind: int) -> int:
    return {EventKind.VISIT: VISITORS, EventKind.LEAD: LEADS, EventKind.PURCHASE: PURCHASES}[
        EventKind(kind)
    ]


def summed(slots: Sequence[int], metric: int, up_to_bucket: int = _BUCKETS - 1) -> int:
    return sum(slots[b * _METRICS + metric] for b in range(up_to_bucket + 1))


def channel_name(index: int) -> str:
    return str(index)


def _touches(times: Sequence[float], channels: Sequence[int]) -> list[Touchpoint]:
    # The repository orders touches by (time, exposure id); ids that sort in that order
    # keep it, whatever the models' tie rule does with equal times.
    return [
        Touchpoint(f"{i:06d}", time, channel_name(channel))
        for i, (time, channel) in enumerate(zip(times, channels, strict=True))
    ]


def fit(model: Model, inputs: Inputs) -> DataDrivenWeights | None:
    """The data-driven model's channel weights, learnt from the campaign's converting
    paths (leads and purchases with touches) and its exposed households that did not
    convert."""
    if not model.data_driven:
        return None
    shapes: dict[tuple[int, ...], int] = {}
    for event in inputs.events:
        if event.kind != EventKind.VISIT:
            shapes[event.channels] = shapes.get(event.channels, 0) + 1
    paths = [
        Path(tuple(channel_name(c) for c in chain), True, count) for chain, count in shapes.items()
    ]
    paths.extend(
        Path(tuple(channel_name(c) for c in chain), False, count)
        for chain, count in inputs.nonconverting
    )
    return fit_markov(paths) if model is Model.MARKOV else fit_shapley(paths)


@dataclass(frozen=True, slots=True)
class _Shape:
    kind: int
    channels: tuple[int, ...]
    podcasts: tuple[int, ...]
    buckets: tuple[int, ...]
    value_minor: int


def _shape(event: CreditedEvent) -> _Shape:
    return _Shape(
        event.kind,
        event.channels,
        event.podcasts,
        tuple(bucket_of(event.time - t) for t in event.touch_times),
        event.value_minor if event.kind == EventKind.PURCHASE else 0,
    )


def shapes(events: Iterable[CreditedEvent]) -> dict[_Shape, int]:
    out: dict[_Shape, int] = {}
    for event in events:
        s = _shape(event)
        out[s] = out.get(s, 0) + 1
    return out


class _Shares:
    """Credits and their whole units, memoised by what they depend on."""

    def __init__(self, model: Model, weights: DataDrivenWeights | None) -> None:
        self._model = model
        self._weights = weights
        self._credits: dict[object, list[Fraction]] = {}
        self._units: dict[tuple[object, int], list[int]] = {}

    def credits_of(self, channels: tuple[int, ...]) -> tuple[object, list[Fraction]]:
        key: object = channels if self._model.data_driven else len(channels)
        found = self._credits.get(key)
        if found is None:
            touches = _touches([0.0] * len(channels), channels)
            found = credits(self._model, touches, 0.0, channel_weights=self._weights)
            self._credits[key] = found
        return key, found

    def units(self, key: object, shares: list[Fraction], amount: int) -> list[int]:
        memo = (key, amount)
        found = self._units.get(memo)
        if found is None:
            found = allocate_minor(amount, shares)
            self._units[memo] = found
        return found


def _add(
    pairs: dict[tuple[int, int], list[int]],
    channels: Sequence[int],
    podcasts: Sequence[int],
    buckets: Sequence[int],
    metric: int,
    units: Sequence[int],
    times: int,
) -> None:
    for channel, podcast, bucket, share in zip(channels, podcasts, buckets, units, strict=True):
        if share:
            slots = pairs.get((channel, podcast))
            if slots is None:
                slots = pairs[(channel, podcast)] = [0] * SLOTS
            slots[bucket * _METRICS + metric] += share * times


def credit(
    model: Model,
    inputs: Inputs,
    *,
    half_life_s: float,
    weights: DataDrivenWeights | None = None,
    by_shape: Mapping[_Shape, int] | None = None,
) -> Credited:
    """Every event's credit under `model`, in whole units per (line item, podcast) pair."""
    out = Credited(model)
    pairs = out.pairs
    if model is Model.TIME_DECAY:
        for event in inputs.events:
            touches = _touches(event.touch_times, event.channels)
            shares = credits(model, touches, event.time, half_life_s=half_life_s)
            buckets = [bucket_of(event.time - t) for t in event.touch_times]
            metric = metric_of(event.kind)
            _add(
                pairs,
                event.channels,
                event.podcasts,
                buckets,
                metric,
                allocate_minor(GRID, shares),
                1,
            )
            if event.kind == EventKind.PURCHASE and event.value_minor:
                _add(
                    pairs,
                    event.channels,
                    event.podcasts,
                    buckets,
                    REVENUE,
                    allocate_minor(event.value_minor, shares),
                    1,
                )
        return out
    memo = _Shares(model, weights if weights is not None else fit(model, inputs))
    for s, times in (by_shape if by_shape is not None else shapes(inputs.events)).items():
        key, shares = memo.credits_of(s.channels)
        metric = metric_of(s.kind)
        _add(pairs, s.channels, s.podcasts, s.buckets, metric, memo.units(key, shares, GRID), times)
        if s.value_minor:
            _add(
                pairs,
                s.channels,
                s.podcasts,
                s.buckets,
                REVENUE,
                memo.units(key, shares, s.value_minor),
                times,
            )
    return out


def credit_models(
    models: Sequence[Model], inputs: Inputs, *, half_life_s: float
) -> dict[Model, Credited]:
    by_shape = shapes(inputs.events)
    return {
        model: credit(model, inputs, half_life_s=half_life_s, by_shape=by_shape)
        for model in dict.fromkeys(models)
    }


def round_half_even(value: Fraction) -> int:
    return round(value)


def divide_money(amount_minor: int, units: int) -> int | None:
    """amount ÷ (units / GRID), half to even; None when dividing by nothing."""
    if units <= 0:
        return None
    return round_half_even(Fraction(amount_minor * GRID, units))


def split_spend(spend_minor: int, impressions: Mapping[int, int]) -> dict[int, int]:
    """A line item's spend shared among podcasts by impressions, to the minor unit."""
    keys = sorted(k for k, n in impressions.items() if n > 0)
    total = sum(impressions[k] for k in keys)
    if not keys:
        return {}
    shares = allocate_minor(spend_minor, [Fraction(impressions[k], total) for k in keys])
    return dict(zip(keys, shares, strict=True))
