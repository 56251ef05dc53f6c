"""Money in integer minor units: a conversion's value shared by its credits, exactly.

Largest remainder (Hamilton): every touch first gets the floor of value * credit; the
units left over (fewer than the number of touches) go one each to the touches with the
largest fractional parts, ties to the earlier touch. A touch with zero credit never gets
a unit (its fractional part is zero and at least as many touches as units left over have
a positive one). A negative value (a refund) is shared as its magnitude, then negated, so
the rule is symmetric.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import lcm


def allocate_minor(value_minor: int, credits: Sequence[Fraction]) -> list[int]:
    if not credits:
        if value_minor:
            raise ValueError("an unattributed conversion has no touches to share its value")
        return []
    # Over the common denominator every step is integer arithmetic: the check that the
    # credits sum to 1, the floors and the remainders compared.
    common = lcm(*(c.denominator for c in credits))
    scaled = [c.numerator * (common // c.denominator) for c in credits]
    if min(scaled) < 0 or sum(scaled) != common:
        raise ValueError("credits must be non-negative and sum to exactly 1")
    sign = -1 if value_minor < 0 else 1
    magnitude = abs(value_minor)
    floors: list[int] = []
    remainders: list[int] = []
    for share in scaled:
        units, rest = divmod(magnitude * share, common)
        floors.append(units)
        remainders.append(rest)
    left_over = magnitude - sum(floors)
    by_remainder = sorted(range(len(credits)), key=lambda i: (-remainders[i], i))
    for i in by_remainder[:left_over]:
        floors[i] += 1
    return [sign * units for units in floors]
