"""The report's integer fast paths against the models' own functions, and its exact sums."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from services.attribution.models import Model, Touchpoint, allocate_minor, credits
from services.attribution.reports.domain import (
    GRID,
    LEADS,
    PURCHASES,
    REVENUE,
    VISITORS,
    Breakdown,
    CreditedEvent,
    Inputs,
    Reach,
    Unattributed,
    credit_models,
    decay_weights,
    largest_remainder,
    summed,
)

shares = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8).filter(
    lambda xs: sum(xs) > 0
)


@given(shares, st.integers(min_value=-(10**9), max_value=10**9))
def test_largest_remainder_is_allocate_minor(numerators: list[int], amount: int) -> None:
    total = sum(numerators)
    fractions = [Fraction(n, total) for n in numerators]
    assert largest_remainder(amount, numerators, total) == allocate_minor(amount, fractions)


@given(
    st.lists(st.floats(min_value=0, max_value=90 * 86_400), min_size=1, max_size=8),
    st.floats(min_value=60, max_value=30 * 86_400),
)
def test_decay_weights_are_the_models_time_decay(ages: list[float], half_life: float) -> None:
    at = 2_000_000_000.0
    times = sorted(at - age for age in ages)
    touches = [Touchpoint(f"{i:06d}", t, "c") for i, t in enumerate(times)]
    expected = credits(Model.TIME_DECAY, touches, at, half_life_s=half_life)
    weights = decay_weights(times, at, half_life)
    assert [Fraction(w, sum(weights)) for w in weights] == expected


events = st.lists(
    st.builds(
        lambda kind, at, value, touches: CreditedEvent(
            kind,
            at,
            value,
            tuple(at - lag for lag, _, _ in touches),
            tuple(channel for _, channel, _ in touches),
            tuple(podcast for _, _, podcast in touches),
        ),
        st.sampled_from([1, 2, 3]),
        st.floats(min_value=1e9, max_value=1.1e9),
        st.integers(min_value=0, max_value=100_000),
        st.lists(
            st.tuples(
                st.floats(min_value=0, max_value=40 * 86_400),
                st.integers(min_value=1, max_value=4),
                st.integers(min_value=0, max_value=3),
            ),
            min_size=1,
            max_size=6,
        ).map(lambda ts: sorted(ts, key=lambda t: -t[0])),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(events, st.lists(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=5)))
def test_rows_sum_exactly_to_one_grid_per_event(
    chosen: list[CreditedEvent], nonconverting: list[list[int]]
) -> None:
    inputs = Inputs(
        line_items=[],
        podcasts=[],
        total=Reach(0, 0),
        by_line_item={},
        by_podcast={},
        impressions_by_pair={},
        events=chosen,
        nonconverting=[(tuple(path), 1) for path in nonconverting],
        promo_purchases={},
        unattributed=Unattributed(),
        data_end=dt.datetime.now(dt.UTC),
    )
    expected = {
        VISITORS: sum(GRID for e in chosen if e.kind == 1),
        LEADS: sum(GRID for e in chosen if e.kind == 2),
        PURCHASES: sum(GRID for e in chosen if e.kind == 3),
        REVENUE: sum(e.value_minor for e in chosen if e.kind == 3),
    }
    for model, credited in credit_models(list(Model), inputs, half_life_s=7 * 86_400).items():
        total = credited.total()
        for metric, units in expected.items():
            assert summed(total, metric) == units, (model, metric)
            for breakdown, position in ((Breakdown.LINE_ITEM, 0), (Breakdown.PODCAST, 1)):
                keys = {pair[position] for pair in credited.pairs}
                rows = sum(summed(credited.row(breakdown, k), metric) for k in keys)
                assert rows == units, (model, breakdown, metric)
