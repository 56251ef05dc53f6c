"""Lift of exposed households over a control group, with 95% intervals: pure arithmetic
on six counts, no I/O.

For each outcome (a visit, a purchase) and group: the rate p = households with the
outcome ÷ households. Then

- relative lift = (p_e - p_c) ÷ p_c = p_e/p_c - 1 (the risk ratio minus one);
- incremental visitors = n_e * (p_e - p_c): visitors beyond what the control rate
  predicts for the exposed households.

Intervals (95%, two-sided):

- Relative lift: the log risk-ratio interval of Katz et al. (1978),
  exp(ln RR ± z·sqrt(1/x_e - 1/n_e + 1/x_c - 1/n_c)) - 1. Chosen over a Wald interval
  on the difference divided by p_c because on the log scale it is asymmetric, as the
  ratio's sampling distribution is when rates are small (a few percent of households
  visit), and can never fall below -100%; its coverage is close to nominal once the
  control group has a handful of events, which the minimum below guarantees. When no
  exposed household has the outcome (x_e = 0) the ratio is 0, the lower limit is 0
  (-100%) and the upper limit is Katz's with the Haldane-Anscombe correction: 0.5
  added to each of the four cells of the 2x2 table (so n + 1 per group).
- Incremental visitors: n_e * Newcombe's hybrid score interval for p_e - p_c
  (Newcombe 1998, method 10), built from the two Wilson score intervals; it stays
  inside [-1, 1] and behaves at 0 and 100% without any correction.

p-value (two-sided, of p_e = p_c): the two-proportion z-test with pooled variance,
or Fisher's exact test when any expected cell of the 2x2 table is under 5, where the
normal approximation is poor. Fisher's is conditional and conservative; the cost of
its exactness is only paid for small counts, where it is cheap.

Minimum sizes: each group at least MIN_HOUSEHOLDS households, and the control group
at least MIN_CONTROL_EVENTS households with the outcome (a relative lift over a
control rate of 0 does not exist, and one over 1 to 4 events is mostly noise). Below
them the lift is unavailable with a reason; purchases may be unavailable while
visits are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Two-sided 95%.
Z95 = NormalDist().inv_cdf(0.975)
MIN_HOUSEHOLDS = 100
MIN_CONTROL_EVENTS = 5
# Fisher's exact test below this expected count in any cell of the 2x2 table.
MIN_EXPECTED_FOR_Z = 5.0
# Tables whose probability is within this relative distance of the observed one's
# count as "as extreme" (floating-point ties; the same tolerance as R's fisher.test).
_FISHER_TIE = 1e-7
_HALDANE = 0.5


@dataclass(frozen=True, slots=True)
class Interval:
    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper

    @property
    def width(self) -> float:
        return self.upper - self.lower


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """One group's households and how many of them visited and purchased."""

    households: int
    visitors: int
    purchasers: int

    def __post_init__(self) -> None:
        if not 0 <= self.visitors <= self.households or not (
            0 <= self.purchasers <= self.households
        ):
            raise ValueError(f"counts out of range: {self}")


@dataclass(frozen=True, slots=True)
class OutcomeLift:
    """One outcome (visit or purchase) in both groups."""

    exposed_rate: float
    control_rate: float
    # p_e/p_c - 1 and its interval.
    lift: float
    lift_interval: Interval
    # p_e - p_c and its interval.
    difference: float
    difference_interval: Interval
    p_value: float


@dataclass(frozen=True, slots=True)
class LiftEstimate:
    exposed_households: int
    control_households: int
    visits: OutcomeLift
    incremental_visitors: float
    incremental_visitors_interval: Interval
    # Rates only (no lift, interval or p-value) when purchases_unavailable_reason is set.
    purchases: OutcomeLift | None
    exposed_purchase_rate: float
    control_purchase_rate: float
    purchases_unavailable_reason: str = ""


@dataclass(frozen=True, slots=True)
class LiftUnavailable:
    reason: str


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson's score interval for a proportion (no continuity correction)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The limits at 0 and n are exact; the formula leaves rounding residue there.
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(lower, upper)


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> Interval:
    """Newcombe's hybrid score interval for x1/n1 - x2/n2 (1998, method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    w1, w2 = wilson(x1, n1, z), wilson(x2, n2, z)
    d = p1 - p2
    lower = d - math.sqrt((p1 - w1.lower) ** 2 + (w2.upper - p2) ** 2)
    upper = d + math.sqrt((w1.upper - p1) ** 2 + (p2 - w2.lower) ** 2)
    return Interval(max(-1.0, min(lower, d)), min(1.0, max(upper, d)))


def katz_ratio(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> Interval:
    """Katz's log interval for the risk ratio (x1/n1) ÷ (x2/n2); x2 must be positive.

    With x1 = 0 the ratio is 0, so is the lower limit, and the upper limit comes from
    the table with 0.5 added to every cell (Haldane-Anscombe).
    """
    if x2 <= 0:
        raise ValueError("the risk ratio needs events in the second group")
    ratio = (x1 / n1) / (x2 / n2)
    if x1 == 0:
        a, m1, c, m2 = _HALDANE, n1 + 2 * _HALDANE, x2 + _HALDANE, n2 + 2 * _HALDANE
        log_ratio = math.log((a / m1) / (c / m2))
        se = math.sqrt(1 / a - 1 / m1 + 1 / c - 1 / m2)
        return Interval(0.0, max(ratio, math.exp(log_ratio + z * se)))
    se = math.sqrt(max(0.0, 1 / x1 - 1 / n1 + 1 / x2 - 1 / n2))
    log_ratio = math.log(ratio)
    return Interval(
        min(ratio, math.exp(log_ratio - z * se)), max(ratio, math.exp(log_ratio + z * se))
    )


def pooled_z_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the two-proportion z-test with pooled variance."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def fisher_exact_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test: the probability, given the margins, of
    every table no more probable than the observed one."""
    events = x1 + x2
    total = n1 + n2
    first, last = max(0, events - n2), min(events, n1)

    def log_pmf(k: int) -> float:
        return _log_choose(n1, k) + _log_choose(n2, events - k) - _log_choose(total, events)

    observed = log_pmf(x1)
    threshold = observed + math.log1p(_FISHER_TIE)
    p = math.fsum(math.exp(lp) for k in range(first, last + 1) if (lp := log_pmf(k)) <= threshold)
    return min(1.0, max(0.0, p))


def p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of x1/n1 = x2/n2: Fisher's exact test when any expected cell is
    under MIN_EXPECTED_FOR_Z, the pooled z-test otherwise."""
    events, total = x1 + x2, n1 + n2
    smallest = min(n1, n2) * min(events, total - events) / total
    if smallest < MIN_EXPECTED_FOR_Z:
        return fisher_exact_p_value(x1, n1, x2, n2)
    return pooled_z_p_value(x1, n1, x2, n2)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def compare(x_e: int, n_e: int, x_c: int, n_c: int) -> OutcomeLift:
    """One outcome's rates, lift, difference, intervals and p-value; x_c must be positive."""
    p_e, p_c = x_e / n_e, x_c / n_c
    ratio = katz_ratio(x_e, n_e, x_c, n_c)
    return OutcomeLift(
        exposed_rate=p_e,
        control_rate=p_c,
        lift=p_e / p_c - 1,
        lift_interval=Interval(ratio.lower - 1, ratio.upper - 1),
        difference=p_e - p_c,
        difference_interval=newcombe_difference(x_e, n_e, x_c, n_c),
        p_value=p_value(x_e, n_e, x_c, n_c),
    )


def _too_few_households(exposed: GroupCounts, control: GroupCounts) -> str:
    for name, group in (("exposed", exposed), ("control", control)):
        if group.households < MIN_HOUSEHOLDS:
            return (
                f"{name} group has {group.households} households; at least {MIN_HOUSEHOLDS} needed"
            )
    return ""


def _too_few_events(control: int, what: str) -> str:
    if control < MIN_CONTROL_EVENTS:
        return (
            f"control group has {control} {what}; at least {MIN_CONTROL_EVENTS} needed "
            "for a relative lift"
        )
    return ""


def estimate_lift(exposed: GroupCounts, control: GroupCounts) -> LiftEstimate | LiftUnavailable:
    """Visit and purchase lift of `exposed` over `control`, or why there is none."""
    reason = _too_few_households(exposed, control) or _too_few_events(control.visitors, "visitors")
    if reason:
        return LiftUnavailable(reason)
    n_e, n_c = exposed.households, control.households
    visits = compare(exposed.visitors, n_e, control.visitors, n_c)
    difference = visits.difference_interval
    purchases_reason = _too_few_events(control.purchasers, "purchasers")
    return LiftEstimate(
        exposed_households=n_e,
        control_households=n_c,
        visits=visits,
        incremental_visitors=n_e * visits.difference,
        incremental_visitors_interval=Interval(n_e * difference.lower, n_e * difference.upper),
        purchases=(
            None if purchases_reason else compare(exposed.purchasers, n_e, control.purchasers, n_c)
        ),
        exposed_purchase_rate=exposed.purchasers / n_e,
        control_purchase_rate=control.purchasers / n_c,
        purchases_unavailable_reason=purchases_reason,
    )
