"""Attribution models without a stack: the window, every model's invariants (Hypothesis),
money in minor units, and worked examples from the literature for the rule-based models.

The data-driven models' fits (Markov, Shapley) against brute-force references are in
test_attribution_models_data_driven.py.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from podmesh.type.v1 import attribution_model_pb2

from services.attribution.models import (
    DEFAULT_HALF_LIFE_S,
    Model,
    Path,
    Touchpoint,
    allocate_minor,
    credits,
    fit_markov,
    fit_shapley,
    in_window,
)

DAY = 86_400
CHANNELS = ("a", "b", "c", "d")
HEURISTIC = [m for m in Model if not m.data_driven]


@st.composite
def touch_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 8) -> list[Touchpoint]:
    """Touches with distinct ids; times on a coarse grid too, so that ties happen."""
    times = draw(
        st.lists(
            st.one_of(
                st.integers(0, 40).map(lambda d: d * DAY),
                st.floats(0, 40 * DAY, allow_nan=False),
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )
    channels = draw(st.lists(st.sampled_from(CHANNELS), min_size=len(times), max_size=len(times)))
    ids = draw(st.permutations([f"e{i:02d}" for i in range(len(times))]))
    return [Touchpoint(i, t, c) for i, t, c in zip(ids, times, channels, strict=True)]


path_sets = st.lists(
    st.builds(
        Path,
        channels=st.lists(st.sampled_from(CHANNELS), max_size=4).map(tuple),
        converted=st.booleans(),
        count=st.integers(1, 3),
    ),
    min_size=1,
    max_size=8,
)

WEIGHTS: dict[Model, Mapping[str, Fraction]] = {
    Model.MARKOV: fit_markov(
        [
            Path(("a", "b"), True),
            Path(("b",), False),
            Path(("c", "a"), True, 2),
            Path(("d",), False),
        ]
    ),
    Model.SHAPLEY: fit_shapley(
        [
            Path(("a", "b"), True),
            Path(("b",), False),
            Path(("c", "a"), True, 2),
            Path(("d",), False),
        ]
    ),
}


def credit(model: Model, touches: list[Touchpoint], at: float) -> list[Fraction]:
    return credits(model, touches, at, channel_weights=WEIGHTS.get(model))


def by_exposure(touches: list[Touchpoint], at: float, model: Model) -> dict[str, Fraction]:
    ordered = sorted(touches, key=lambda t: (t.time, t.exposure_id))
    return {t.exposure_id: c for t, c in zip(ordered, credit(model, touches, at), strict=True)}


def test_model_numbers_are_the_protos() -> None:
    proto = attribution_model_pb2.AttributionModel
    named = set(proto.keys()) - {"ATTRIBUTION_MODEL_UNSPECIFIED"}
    assert named == {f"ATTRIBUTION_MODEL_{m.name}" for m in Model}
    for model in Model:
        assert proto.Value(f"ATTRIBUTION_MODEL_{model.name}") == model.value


@given(touch_lists(), st.sampled_from(list(Model)), st.integers(0, 5 * DAY))
def test_credits_sum_to_exactly_one_and_are_never_negative(
    touches: list[Touchpoint], model: Model, after: int
) -> None:
    at = max(t.time for t in touches) + after
    shares = credit(model, touches, at)
    assert len(shares) == len(touches)
    assert all(isinstance(s, Fraction) and s >= 0 for s in shares)
    assert sum(shares) == 1


@settings(deadline=None)
@given(
    touch_lists(),
    st.sampled_from(list(Model)),
    st.integers(-(10**12), 10**12),
)
def test_money_sums_to_exactly_the_value_and_follows_the_credits(
    touches: list[Touchpoint], model: Model, value: int
) -> None:
    at = max(t.time for t in touches)
    shares = credit(model, touches, at)
    money = allocate_minor(value, shares)
    assert sum(money) == value
    for units, share in zip(money, shares, strict=True):
        assert abs(units - value * share) < 1
        if share == 0:
            assert units == 0


@given(touch_lists(), st.sampled_from(list(Model)), st.randoms(use_true_random=False))
def test_the_input_order_never_changes_the_credits(
    touches: list[Touchpoint], model: Model, rng: random.Random
) -> None:
    at = max(t.time for t in touches) + DAY
    shuffled = list(touches)
    rng.shuffle(shuffled)
    assert by_exposure(shuffled, at, model) == by_exposure(touches, at, model)
    assert credit(model, shuffled, at) == credit(model, touches, at)


@given(
    st.sampled_from(list(Model)),
    st.sampled_from(CHANNELS),
    st.floats(0, 30 * DAY),
    st.integers(1, 10**9),
)
def test_a_single_touch_gets_everything(model: Model, channel: str, age: float, value: int) -> None:
    touch = Touchpoint("only", 1_000_000.0, channel)
    shares = credit(model, [touch], touch.time + age)
    assert shares == [1]
    assert allocate_minor(value, shares) == [value]


@given(
    touch_lists(max_size=12),
    st.sampled_from(list(Model)),
    st.integers(0, 40 * DAY),
    st.integers(1, 30 * DAY),
)
def test_touches_outside_the_window_or_after_the_conversion_get_nothing(
    touches: list[Touchpoint], model: Model, at: int, window: int
) -> None:
    kept = in_window(touches, at, window)
    inside = {t.exposure_id for t in touches if at - window <= t.time <= at}
    assert {t.exposure_id for t in kept} == inside
    assert kept == sorted(kept, key=lambda t: (t.time, t.exposure_id))
    shares = credit(model, kept, at)
    attributed = {t.exposure_id for t, s in zip(kept, shares, strict=True)}
    assert attributed == inside
    if not inside:
        assert shares == []


def test_the_window_includes_both_bounds() -> None:
    at = 100 * DAY
    touches = [
        Touchpoint("too-old", at - 30 * DAY - 1, "a"),
        Touchpoint("oldest", at - 30 * DAY, "a"),
        Touchpoint("same-time", at, "b"),
        Touchpoint("after", at + 1, "b"),
    ]
    assert [t.exposure_id for t in in_window(touches, at, 30 * DAY)] == ["oldest", "same-time"]


def test_ties_in_time_are_ordered_by_exposure_id() -> None:
    touches = [Touchpoint("z", 5.0, "a"), Touchpoint("m", 5.0, "b"), Touchpoint("a", 9.0, "c")]
    assert [t.exposure_id for t in in_window(touches, 10.0, 100.0)] == ["m", "z", "a"]
    assert by_exposure(touches, 10.0, Model.FIRST_TOUCH) == {"m": 1, "z": 0, "a": 0}


def test_a_touch_after_the_conversion_is_refused_by_credits() -> None:
    with pytest.raises(ValueError, match="after the conversion"):
        credits(Model.LINEAR, [Touchpoint("late", 11.0, "a")], 10.0)


def test_a_conversion_without_touches_is_unattributed() -> None:
    for model in Model:
        assert credit(model, [], 10.0) == []
    assert allocate_minor(0, []) == []
    with pytest.raises(ValueError, match="unattributed"):
        allocate_minor(100, [])


@given(touch_lists(min_size=2), st.sampled_from(HEURISTIC))
def test_heuristic_credits_depend_on_the_conversions_own_touches_only(
    touches: list[Touchpoint], model: Model
) -> None:
    """Non-converting paths get no heuristic credit: a rule-based credit is a function of
    one conversion's touches, so no other journey (converting or not) can move it, and
    only conversions are ever credited."""
    at = max(t.time for t in touches)
    alone = credit(model, touches, at)
    assert credits(model, touches, at, channel_weights=WEIGHTS[Model.MARKOV]) == alone


@given(st.integers(3, 40))
def test_position_based_is_40_20_40(count: int) -> None:
    touches = [Touchpoint(f"e{i:02d}", float(i), "a") for i in range(count)]
    shares = credit(Model.POSITION_BASED, touches, float(count))
    assert shares[0] == shares[-1] == Fraction(2, 5)
    assert shares[1:-1] == [Fraction(1, 5) / (count - 2)] * (count - 2)


def test_position_based_with_two_and_one_touches() -> None:
    two = [Touchpoint("a", 1.0, "a"), Touchpoint("b", 2.0, "b")]
    assert credit(Model.POSITION_BASED, two, 3.0) == [Fraction(1, 2), Fraction(1, 2)]
    assert credit(Model.POSITION_BASED, two[:1], 3.0) == [1]


@given(touch_lists(min_size=2), st.floats(60.0, 60 * DAY))
def test_time_decay_never_gives_an_older_touch_more(
    touches: list[Touchpoint], half_life: float
) -> None:
    at = max(t.time for t in touches)
    ordered = sorted(touches, key=lambda t: (t.time, t.exposure_id))
    shares = credits(Model.TIME_DECAY, touches, at, half_life_s=half_life)
    pairs = zip(ordered, shares, strict=True)
    for (older, older_share), (newer, newer_share) in itertools.pairwise(pairs):
        assert older_share <= newer_share
        if older.time == newer.time:
            assert older_share == newer_share


@given(st.floats(1.0, 365 * DAY), st.integers(0, 10**6))
def test_time_decay_halves_per_half_life_and_is_continuous(half_life: float, start: int) -> None:
    one_half_life_apart = [
        Touchpoint("old", float(start), "a"),
        Touchpoint("new", start + half_life, "b"),
    ]
    shares = credits(
        Model.TIME_DECAY, one_half_life_apart, start + half_life + 5.0, half_life_s=half_life
    )
    # Exact when the age difference over the half-life is exactly 1 in floating point.
    if (start + half_life - start) / half_life == 1.0:
        assert shares == [Fraction(1, 3), Fraction(2, 3)]
    # Continuous: a touch a tenth of a half-life older gets 2^-0.1 of the newer one's.
    tenth = [Touchpoint("old", 0.0, "a"), Touchpoint("new", half_life / 10, "b")]
    older, newer = credits(Model.TIME_DECAY, tenth, half_life, half_life_s=half_life)
    assert float(older / newer) == pytest.approx(2**-0.1, rel=1e-12)


def test_time_decay_example_with_a_seven_day_half_life() -> None:
    """Worked example: A. Vermorel, "Time-decay attribution model" (notes,
    https://adriennevermorel.com/notes/time-decay-attribution-model/): with the Google
    Analytics default half-life of 7 days, touches on the conversion day and 7, 14 and 21
    days before weigh 1, 0.5, 0.25 and 0.125, normalised by their sum. The 7-day default
    is the one Google Ads documents ("half-life is 1 week",
    https://developers.google.com/google-ads/api/reference/rpc/v17/AttributionModelEnum.AttributionModel)."""
    at = 50 * DAY
    touches = [Touchpoint(f"t{d:02d}", at - d * DAY, "a") for d in (21, 14, 7, 0)]
    assert DEFAULT_HALF_LIFE_S == 7 * DAY
    shares = credit(Model.TIME_DECAY, touches, at)
    assert shares == [Fraction(1, 15), Fraction(2, 15), Fraction(4, 15), Fraction(8, 15)]


# The $12,000 deal of "Attribution Models: The Math, Worked" (coreyhaines31/marketingskills,
# skills/attribution/references/attribution-models.md): touches on days 0, 5, 12, 30 and 38,
# the conversion on day 38; the source's time-decay dollars are rounded to $5.
DEAL_DAYS = (0, 5, 12, 30, 38)
DEAL_CENTS = 1_200_000


def deal() -> list[Touchpoint]:
    return [Touchpoint(f"T{i + 1}", day * DAY, "x") for i, day in enumerate(DEAL_DAYS)]


def test_time_decay_worked_example_of_a_five_touch_deal() -> None:
    """Published: $175, $290, $575, $3,415 and $7,545 of $12,000 with a 7-day half-life."""
    cents = allocate_minor(DEAL_CENTS, credit(Model.TIME_DECAY, deal(), 38 * DAY))
    assert sum(cents) == DEAL_CENTS
    published = [175_00, 290_00, 575_00, 3_415_00, 7_545_00]
    for ours, theirs in zip(cents, published, strict=True):
        assert abs(ours - theirs) <= 5_00


def test_position_based_worked_example_of_a_five_touch_deal() -> None:
    """Published: $4,800 to the first and the last touch, $800 to each of the three
    middle ones; the 40/20/40 rule Google Ads documents for position based
    (GOOGLE_SEARCH_ATTRIBUTION_POSITION_BASED in the AttributionModel reference cited above)."""
    cents = allocate_minor(DEAL_CENTS, credit(Model.POSITION_BASED, deal(), 38 * DAY))
    assert cents == [4_800_00, 800_00, 800_00, 800_00, 4_800_00]
    linear = allocate_minor(DEAL_CENTS, credit(Model.LINEAR, deal(), 38 * DAY))
    assert linear == [2_400_00] * 5


def test_remainders_go_to_the_largest_fractions_then_the_earlier_touch() -> None:
    thirds = [Fraction(1, 3)] * 3
    assert allocate_minor(100, thirds) == [34, 33, 33]
    assert allocate_minor(-100, thirds) == [-34, -33, -33]
    assert allocate_minor(1, [Fraction(1, 2), Fraction(1, 2)]) == [1, 0]
    assert allocate_minor(10, [Fraction(1, 4), Fraction(7, 20), Fraction(2, 5)]) == [3, 3, 4]
    assert allocate_minor(10, [Fraction(1, 5), Fraction(33, 100), Fraction(47, 100)]) == [2, 3, 5]
    assert allocate_minor(3, [Fraction(0), Fraction(1, 2), Fraction(1, 2)]) == [0, 2, 1]


@pytest.mark.parametrize(
    "shares",
    [[Fraction(1, 2)], [Fraction(3, 2), Fraction(-1, 2)], [Fraction(1, 2), Fraction(1, 3)]],
)
def test_money_refuses_credits_that_are_not_a_distribution(shares: list[Fraction]) -> None:
    with pytest.raises(ValueError, match="sum to exactly 1"):
        allocate_minor(100, shares)


def test_credits_refuse_what_they_cannot_compute() -> None:
    touch = [Touchpoint("a", 1.0, "a")]
    with pytest.raises(ValueError, match="needs the channel weights"):
        credits(Model.MARKOV, touch, 2.0)
    with pytest.raises(ValueError, match="fitted for MARKOV"):
        credits(Model.SHAPLEY, touch, 2.0, channel_weights=WEIGHTS[Model.MARKOV])
    with pytest.raises(ValueError, match="half-life"):
        credits(Model.TIME_DECAY, touch, 2.0, half_life_s=0)
    with pytest.raises(ValueError, match="not a valid Model"):
        credits(0, touch, 2.0)
    with pytest.raises(ValueError, match="window"):
        in_window(touch, 2.0, -1)
    with pytest.raises(ValueError, match="counted at least once"):
        Path(("a",), True, 0)
