"""Lift statistics without a stack: published worked examples, properties and coverage."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.attribution.lift.statistics import (
    MIN_CONTROL_EVENTS,
    MIN_HOUSEHOLDS,
    GroupCounts,
    Interval,
    LiftEstimate,
    LiftUnavailable,
    compare,
    estimate_lift,
    fisher_exact_p_value,
    katz_ratio,
    newcombe_difference,
    p_value,
    pooled_z_p_value,
    wilson,
)

# Newcombe RG (1998). Interval estimation for the difference between independent
# proportions: comparison of eleven methods. Statistics in Medicine 17:873-890,
# Table II, method 10 (the hybrid score interval), examples (a) to (h).
NEWCOMBE_1998_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]

# Newcombe RG (1998). Two-sided confidence intervals for the single proportion:
# comparison of seven methods. Statistics in Medicine 17:857-872, Table I, method 3
# (Wilson's score interval without continuity correction).
NEWCOMBE_1998_WILSON = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_1998_TABLE_II)
def test_newcombe_hybrid_score_matches_newcombe_1998_table_ii(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    interval = newcombe_difference(*counts)
    assert round(interval.lower, 4) == expected[0]
    assert round(interval.upper, 4) == expected[1]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_1998_WILSON)
def test_wilson_matches_newcombe_1998_single_proportion_table(
    counts: tuple[int, int], expected: tuple[float, float]
) -> None:
    interval = wilson(*counts)
    assert round(interval.lower, 4) == expected[0]
    assert round(interval.upper, 4) == expected[1]


def test_katz_risk_ratio_worked_example() -> None:
    """ACTG 076 (Connor et al., NEJM 1994;331:1173): HIV transmission 13/180 with
    zidovudine against 40/183 with placebo. The log method as in Gardner & Altman,
    Statistics with Confidence (BMJ, 1989), pp. 51-52: RR 0.33, 95% CI 0.18 to 0.60."""
    ratio = katz_ratio(13, 180, 40, 183)
    assert round((13 / 180) / (40 / 183), 2) == 0.33
    assert (round(ratio.lower, 2), round(ratio.upper, 2)) == (0.18, 0.60)


def test_fisher_exact_matches_the_tea_tasting_experiment() -> None:
    """Fisher (1935), The Design of Experiments: 3 of 4 milk-first cups named right,
    1 of 4 tea-first cups named milk-first; two-sided p = 34/70 = 0.4857."""
    assert fisher_exact_p_value(3, 4, 1, 4) == pytest.approx(34 / 70, abs=1e-12)
    # Small counts go to Fisher's test.
    assert p_value(3, 4, 1, 4) == pytest.approx(34 / 70, abs=1e-12)


def test_pooled_z_test_matches_the_score_statistic() -> None:
    """56/70 against 48/80: the score (pooled) statistic is 2.65, one-sided p 0.004
    (the cicalc package's Mee interval at delta 0, GSK-Biostatistics/cicalc), so the
    two-sided p is 0.008."""
    p = pooled_z_p_value(56, 70, 48, 80)
    assert round(p / 2, 3) == 0.004
    assert round(NormalDist().inv_cdf(1 - p / 2), 2) == 2.65
    assert p_value(56, 70, 48, 80) == p


def test_zero_exposed_events_give_minus_100_percent_with_a_finite_upper_limit() -> None:
    comparison = compare(0, 500, 10, 500)
    assert comparison.lift == -1.0
    assert comparison.lift_interval.lower == -1.0
    # Haldane-Anscombe: 0.5 / 501 against 10.5 / 501.
    se = math.sqrt(1 / 0.5 - 1 / 501 + 1 / 10.5 - 1 / 501)
    upper = math.exp(math.log(0.5 / 10.5) + 1.959963984540054 * se) - 1
    assert comparison.lift_interval.upper == pytest.approx(upper, rel=1e-12)


def test_katz_needs_control_events() -> None:
    with pytest.raises(ValueError, match="events in the second group"):
        katz_ratio(3, 100, 0, 100)


def test_too_few_households_give_the_reason() -> None:
    result = estimate_lift(GroupCounts(5000, 400, 20), GroupCounts(12, 1, 0))
    assert result == LiftUnavailable("control group has 12 households; at least 100 needed")
    result = estimate_lift(GroupCounts(99, 10, 5), GroupCounts(5000, 400, 20))
    assert result == LiftUnavailable("exposed group has 99 households; at least 100 needed")


def test_too_few_control_visitors_give_the_reason() -> None:
    result = estimate_lift(GroupCounts(5000, 400, 20), GroupCounts(1000, 4, 0))
    assert isinstance(result, LiftUnavailable)
    assert result.reason == ("control group has 4 visitors; at least 5 needed for a relative lift")


def test_purchases_can_be_unavailable_while_visits_are_not() -> None:
    result = estimate_lift(GroupCounts(5000, 400, 20), GroupCounts(5000, 250, 3))
    assert isinstance(result, LiftEstimate)
    assert result.purchases is None
    assert result.purchases_unavailable_reason == (
        "control group has 3 purchasers; at least 5 needed for a relative lift"
    )
    assert result.exposed_purchase_rate == 20 / 5000
    assert result.control_purchase_rate == 3 / 5000
    assert result.visits.lift == pytest.approx(0.6)
    assert result.incremental_visitors == pytest.approx(150.0)


def test_worked_lift() -> None:
    """5,000 exposed households, 400 visited; 20,000 control households, 1,000 visited:
    8% against 5%, +60%, 150 incremental visitors."""
    result = estimate_lift(GroupCounts(5000, 400, 60), GroupCounts(20000, 1000, 160))
    assert isinstance(result, LiftEstimate)
    visits = result.visits
    assert (visits.exposed_rate, visits.control_rate) == (0.08, 0.05)
    assert visits.lift == pytest.approx(0.6)
    assert result.incremental_visitors == pytest.approx(150.0)
    se = math.sqrt(1 / 400 - 1 / 5000 + 1 / 1000 - 1 / 20000)
    assert visits.lift_interval.lower == pytest.approx(
        1.6 * math.exp(-1.959963984540054 * se) - 1, rel=1e-12
    )
    difference = newcombe_difference(400, 5000, 1000, 20000)
    assert result.incremental_visitors_interval == Interval(
        5000 * difference.lower, 5000 * difference.upper
    )
    assert visits.p_value < 1e-10
    assert result.purchases is not None
    assert result.purchases.lift == pytest.approx(0.012 / 0.008 - 1)


# Properties.

counts = st.integers(min_value=1, max_value=200_000).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n))
)


@given(counts, counts)
@settings(max_examples=300)
def test_intervals_contain_the_point_estimates_and_p_is_a_probability(
    exposed: tuple[int, int], control: tuple[int, int]
) -> None:
    (n_e, x_e), (n_c, x_c) = exposed, control
    assume(x_c > 0)
    c = compare(x_e, n_e, x_c, n_c)
    assert c.lift_interval.contains(c.lift)
    assert c.lift_interval.lower >= -1.0
    assert c.difference_interval.contains(c.difference)
    assert -1.0 <= c.difference_interval.lower <= c.difference_interval.upper <= 1.0
    assert 0.0 <= c.p_value <= 1.0


@given(counts, counts)
@settings(max_examples=200)
def test_wilson_contains_the_rate(first: tuple[int, int], second: tuple[int, int]) -> None:
    for n, x in (first, second):
        assert wilson(x, n).contains(x / n)


@given(counts)
@settings(max_examples=200)
def test_identical_groups_give_no_lift_and_p_one(group: tuple[int, int]) -> None:
    n, x = group
    assume(x > 0)
    c = compare(x, n, x, n)
    assert c.lift == 0.0
    assert c.difference == 0.0
    assert c.p_value == pytest.approx(1.0, abs=1e-9)
    assert c.lift_interval.lower <= 0.0 <= c.lift_interval.upper


@given(
    st.integers(min_value=1, max_value=5000),
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=2, max_value=5),
)
def test_equal_rates_in_groups_of_different_sizes_give_p_one(x: int, n_extra: int, k: int) -> None:
    n = x + n_extra
    c = compare(x, n, k * x, k * n)
    assert c.lift == pytest.approx(0.0, abs=1e-12)
    assert c.p_value == pytest.approx(1.0, abs=1e-6)


@given(counts, counts, st.integers(min_value=2, max_value=20))
@settings(max_examples=200)
def test_larger_samples_with_the_same_rates_give_narrower_intervals(
    exposed: tuple[int, int], control: tuple[int, int], k: int
) -> None:
    (n_e, x_e), (n_c, x_c) = exposed, control
    assume(0 < x_c < n_c and 0 < x_e < n_e)
    small, large = compare(x_e, n_e, x_c, n_c), compare(k * x_e, k * n_e, k * x_c, k * n_c)
    assert large.lift_interval.width < small.lift_interval.width
    assert large.difference_interval.width < small.difference_interval.width
    # Fisher's exact p is discrete and not monotone in n; the z-test's is.
    assert pooled_z_p_value(k * x_e, k * n_e, k * x_c, k * n_c) <= (
        pooled_z_p_value(x_e, n_e, x_c, n_c) + 1e-12
    )


@given(counts, counts)
@settings(max_examples=200)
def test_swapping_groups_mirrors_the_difference(
    exposed: tuple[int, int], control: tuple[int, int]
) -> None:
    (n_e, x_e), (n_c, x_c) = exposed, control
    forward = newcombe_difference(x_e, n_e, x_c, n_c)
    backward = newcombe_difference(x_c, n_c, x_e, n_e)
    assert forward.lower == pytest.approx(-backward.upper, abs=1e-12)
    assert forward.upper == pytest.approx(-backward.lower, abs=1e-12)
    assert p_value(x_e, n_e, x_c, n_c) == pytest.approx(p_value(x_c, n_c, x_e, n_e), abs=1e-12)


@given(
    st.integers(min_value=MIN_HOUSEHOLDS, max_value=10**6),
    st.integers(min_value=MIN_HOUSEHOLDS, max_value=10**6),
    st.data(),
)
def test_available_lift_is_consistent(n_e: int, n_c: int, data: st.DataObject) -> None:
    x_e = data.draw(st.integers(min_value=0, max_value=n_e))
    x_c = data.draw(st.integers(min_value=MIN_CONTROL_EVENTS, max_value=n_c))
    result = estimate_lift(GroupCounts(n_e, x_e, 0), GroupCounts(n_c, x_c, 0))
    assert isinstance(result, LiftEstimate)
    assert result.incremental_visitors_interval.contains(result.incremental_visitors)
    assert result.purchases is None
    assert result.purchases_unavailable_reason


# Coverage: the interval's promise, checked by simulation with a fixed seed.

DRAWS = 2000


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """A binomial draw as a normal-free inversion (n is small enough here)."""
    return sum(1 for _ in range(n) if rng.random() < p)


@pytest.mark.parametrize(
    ("n_e", "p_e", "n_c", "p_c"),
    [
        (400, 0.06, 400, 0.04),  # small groups, a few percent visit
        (300, 0.03, 1200, 0.03),  # no true lift, unequal groups
    ],
)
def test_intervals_cover_the_true_values_about_95_percent_of_the_time(
    n_e: int, p_e: float, n_c: int, p_c: float
) -> None:
    rng = random.Random(20261207)
    true_lift, true_difference = p_e / p_c - 1, p_e - p_c
    lift_hits = difference_hits = drawn = 0
    for _ in range(DRAWS):
        x_e, x_c = _binomial(rng, n_e, p_e), _binomial(rng, n_c, p_c)
        if x_c == 0:
            continue
        drawn += 1
        c = compare(x_e, n_e, x_c, n_c)
        lift_hits += c.lift_interval.contains(true_lift)
        difference_hits += c.difference_interval.contains(true_difference)
    assert drawn > 0.99 * DRAWS
    assert 0.92 <= lift_hits / drawn <= 0.98
    assert 0.92 <= difference_hits / drawn <= 0.98


def test_p_value_rejects_about_5_percent_of_null_draws() -> None:
    rng = random.Random(7)
    rejections = 0
    for _ in range(DRAWS):
        x_e, x_c = _binomial(rng, 300, 0.05), _binomial(rng, 300, 0.05)
        rejections += p_value(x_e, 300, x_c, 300) < 0.05
    # Fisher's test (used for small expected counts) is conservative, so at most ~5%.
    assert 0.02 <= rejections / DRAWS <= 0.07
