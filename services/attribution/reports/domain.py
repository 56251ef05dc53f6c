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
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from math import lcm

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
# As services.attribution.models.heuristic: float weights scaled to exact integers.
_DECAY_SCALE_BITS = 64


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


_METRIC_OF = {1: VISITORS, 2: LEADS, 3: PURCHASES}


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


def largest_remainder(amount: int, numerators: Sequence[int], denominator: int) -> list[int]:
    """`allocate_minor(amount, [n / denominator for n in numerators])` in integers only:
    the same floors, the same remainders compared, the same ties to the earlier touch.
    Called once per event per model, where Fractions would dominate a report's time."""
    sign = -1 if amount < 0 else 1
    magnitude = abs(amount)
    floors = []
    remainders = []
    for n in numerators:
        units, rest = divmod(magnitude * n, denominator)
        floors.append(units)
        remainders.append(rest)
    left = magnitude - sum(floors)
    if left:
        for i in sorted(range(len(floors)), key=lambda k: (-remainders[k], k))[:left]:
            floors[i] += 1
    return [sign * f for f in floors] if sign < 0 else floors


def _integers(shares: Sequence[Fraction]) -> tuple[list[int], int]:
    common = lcm(*(c.denominator for c in shares))
    return [c.numerator * (common // c.denominator) for c in shares], common


def decay_weights(times: Sequence[float], at: float, half_life_s: float) -> list[int]:
    """Time decay's integer weights, as services.attribution.models.heuristic.time_decay
    computes them (relative to the newest touch, scaled by 2^64); the credits are these
    over their sum."""
    newest = max(times)
    return [int(math.ldexp(2.0 ** (-(newest - t) / half_life_s), _DECAY_SCALE_BITS)) for t in times]


class _Prepared:
    """What every model needs of the events, computed once per report: each touch's
    place in one flat list of units (its (line item, podcast) pair, its response
    bucket and the event's metric), the revenue's offset from it, and the value."""

    def __init__(self, events: Sequence[CreditedEvent]) -> None:
        self.pairs: dict[tuple[int, int], int] = {}
        self.slots: list[tuple[int, ...]] = []
        self.values: list[tuple[int, int]] = []
        pairs = self.pairs
        for event in events:
            metric = _METRIC_OF[event.kind]
            own = []
            for at, channel, podcast in zip(
                event.touch_times, event.channels, event.podcasts, strict=True
            ):
                pair = pairs.get((channel, podcast))
                if pair is None:
                    pair = pairs[(channel, podcast)] = len(pairs)
                own.append(pair * SLOTS + bucket_of(event.time - at) * _METRICS + metric)
            self.slots.append(tuple(own))
            value = event.value_minor if event.kind == EventKind.PURCHASE else 0
            self.values.append((value, REVENUE - metric))

    def credited(self, model: Model, flat: list[int]) -> Credited:
        out = Credited(model)
        for pair, p in self.pairs.items():
            slots = flat[p * SLOTS : (p + 1) * SLOTS]
            if any(slots):
                out.pairs[pair] = slots
        return out


class _Shares:
    """One model's credits as integers over a common denominator, memoised by what they
    depend on: the number of touches (rule-based models) or the sequence of line items
    (data-driven models). Time decay depends on the touches' ages: computed per event."""

    def __init__(self, model: Model, weights: DataDrivenWeights | None) -> None:
        self._model = model
        self._data_driven = model.data_driven
        self._weights = weights
        self._memo: dict[object, tuple[list[int], int, list[int]]] = {}

    def of(self, channels: tuple[int, ...]) -> tuple[list[int], int, list[int]]:
        """Numerators, denominator and the GRID units of one event's touches."""
        key: object = channels if self._data_driven else len(channels)
        found = self._memo.get(key)
        if found is None:
            touches = _touches([0.0] * len(channels), channels)
            shares = credits(self._model, touches, 0.0, channel_weights=self._weights)
            numerators, denominator = _integers(shares)
            found = (numerators, denominator, largest_remainder(GRID, numerators, denominator))
            self._memo[key] = found
        return found


def credit(
    model: Model,
    inputs: Inputs,
    *,
    half_life_s: float,
    prepared: _Prepared | None = None,
) -> Credited:
    """Every event's credit under `model`, in whole units per (line item, podcast) pair."""
    ready = prepared or _Prepared(inputs.events)
    flat = [0] * (len(ready.pairs) * SLOTS)
    single = {Model.FIRST_TOUCH: 0, Model.LAST_TOUCH: -1}.get(model)
    decay = model is Model.TIME_DECAY
    memo = _Shares(model, fit(model, inputs))
    for event, slots, (value, shift) in zip(inputs.events, ready.slots, ready.values, strict=True):
        if len(slots) == 1 or single is not None:
            # All of it to one touch: nothing to share.
            slot = slots[single or 0]
            flat[slot] += GRID
            if value:
                flat[slot + shift] += value
            continue
        if decay:
            numerators = decay_weights(event.touch_times, event.time, half_life_s)
            denominator = sum(numerators)
            units = largest_remainder(GRID, numerators, denominator)
        else:
            numerators, denominator, units = memo.of(event.channels)
        for slot, share in zip(slots, units, strict=True):
            flat[slot] += share
        if value:
            money = largest_remainder(value, numerators, denominator)
            for slot, minor in zip(slots, money, strict=True):
                flat[slot + shift] += minor
    return ready.credited(model, flat)


def credit_models(
    models: Sequence[Model], inputs: Inputs, *, half_life_s: float
) -> dict[Model, Credited]:
    prepared = _Prepared(inputs.events)
    return {
        model: credit(model, inputs, half_life_s=half_life_s, prepared=prepared)
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
