"""The rule-based models: each maps a conversion's ordered touches to credits summing to 1.

All credits are exact `Fraction`s. Linear and position based depend only on the number of
touches, so their credit vectors are computed once per length.

Time decay weighs a touch `2^(-Δt/H)`, Δt its age at the conversion and H the half-life
(continuous, not bucketed by day). The powers are irrational, so they are evaluated in
binary floating point, relative to the newest touch (whose weight is then exactly 1,
which keeps the sum from underflowing however old the touches are), and each float is
taken at its exact value as an integer multiple of 2^-64; the credits are those integers
over their sum, so they sum to exactly 1. Whole multiples of the half-life (e.g. 7, 14
and 21 days with H = 7 days) give exact powers of two and hence the textbook fractions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import repeat

from services.attribution.models.touchpoints import Touchpoint

DEFAULT_HALF_LIFE_S = 7 * 86_400.0

_ONE = Fraction(1)
_ZERO = Fraction(0)
_POSITION_END = Fraction(2, 5)
_POSITION_MIDDLE = Fraction(1, 5)
_HALF = Fraction(1, 2)
# The float weights are in (0, 1]; scaled by 2^64 they are exact integers down to
# 2^-1010, far below anything that could move a credit.
_WEIGHT_SCALE_BITS = 64


def first_touch(count: int) -> tuple[Fraction, ...]:
    return (_ONE,) + (_ZERO,) * (count - 1)


def last_touch(count: int) -> tuple[Fraction, ...]:
    return (_ZERO,) * (count - 1) + (_ONE,)


@lru_cache(maxsize=256)
def linear(count: int) -> tuple[Fraction, ...]:
    return (Fraction(1, count),) * count


@lru_cache(maxsize=256)
def position_based(count: int) -> tuple[Fraction, ...]:
    if count == 1:
        return (_ONE,)
    if count == 2:
        return (_HALF, _HALF)
    middle = _POSITION_MIDDLE / (count - 2)
    return (_POSITION_END,) + (middle,) * (count - 2) + (_POSITION_END,)


def time_decay(touches: Sequence[Touchpoint], half_life_s: float) -> tuple[Fraction, ...]:
    """`touches` in touch order, so the newest is the last."""
    newest = touches[-1].time
    scaled = [
        int(math.ldexp(2.0 ** ((t.time - newest) / half_life_s), _WEIGHT_SCALE_BITS))
        for t in touches
    ]
    return tuple(map(Fraction, scaled, repeat(sum(scaled))))
