"""The data-driven attribution models (Markov removal effect, Shapley) against brute-force
references on small random path sets, the published worked examples, and how their
channel weights become one conversion's credits."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from math import factorial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.attribution.models import (
    SHAPLEY_EXACT_MAX_CHANNELS,
    DataDrivenWeights,
    Model,
    Path,
    Touchpoint,
    allocate_minor,
    credits,
    fit_markov,
    fit_shapley,
)
from services.attribution.models import shapley as shapley_module

CHANNELS = ("a", "b", "c", "d")

path_sets = st.lists(
    st.builds(
        Path,
        channels=st.lists(st.sampled_from(CHANNELS), max_size=5).map(tuple),
        converted=st.booleans(),
        count=st.integers(1, 3),
    ),
    min_size=1,
    max_size=10,
)


def solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Plain Gauss-Jordan elimination over the rationals."""
    size = len(rhs)
    rows = [[*row, value] for row, value in zip(matrix, rhs, strict=True)]
    for col in range(size):
        pivot = next(r for r in range(col, size) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col], strict=True)]
    return [rows[i][size] / rows[i][i] for i in range(size)]


def reference_conversion_probability(paths: Sequence[Path], removed: str | None) -> Fraction:
    """P(START reaches CONVERSION) in the chain of the observed transitions, with every
    transition into `removed` sent to NULL instead: the textbook construction, one
    elimination per removal."""
    counts: dict[str, dict[str, int]] = {}
    for path in paths:
        states = ["START", *path.channels, "CONV" if path.converted else "NULL"]
        for source, target in itertools.pairwise(states):
            row = counts.setdefault(source, {})
            row[target] = row.get(target, 0) + path.count
    transient = [s for s in counts if s != removed]
    index = {s: i for i, s in enumerate(transient)}
    matrix = [[Fraction(int(i == j)) for j in range(len(transient))] for i in range(len(transient))]
    rhs = [Fraction(0)] * len(transient)
    for source in transient:
        row = counts[source]
        out = sum(row.values())
        for target, times in row.items():
            if target == "CONV":
                rhs[index[source]] += Fraction(times, out)
            elif target not in ("NULL", removed):
                matrix[index[source]][index[target]] -= Fraction(times, out)
    return solve(matrix, rhs)[index["START"]]


def reference_shapley(paths: Sequence[Path]) -> dict[str, Fraction]:
    """The permutation definition: each channel's marginal worth averaged over every order
    of arrival, with v(S) = conversions whose path touched only channels of S."""
    converting = [(frozenset(p.channels), p.count) for p in paths if p.converted and p.channels]
    players = sorted({c for channel_set, _ in converting for c in channel_set})

    def worth(coalition: frozenset[str]) -> int:
        return sum(times for channel_set, times in converting if channel_set <= coalition)

    values = dict.fromkeys(players, Fraction(0))
    for order in itertools.permutations(players):
        before: frozenset[str] = frozenset()
        for player in order:
            values[player] += worth(before | {player}) - worth(before)
            before = before | {player}
    return {p: v / factorial(len(players)) for p, v in values.items()}


@settings(deadline=None)
@given(path_sets)
def test_markov_agrees_with_the_brute_force_chain(paths: list[Path]) -> None:
    fitted = fit_markov(paths)
    seen = {c for p in paths for c in p.channels}
    assert set(fitted) == seen
    baseline = reference_conversion_probability(paths, None)
    if baseline == 0:
        assert all(w == 0 for w in fitted.values())
        return
    assert fitted.conversion_probability == pytest.approx(float(baseline), abs=1e-12)
    effects = {c: 1 - reference_conversion_probability(paths, c) / baseline for c in seen}
    total = sum(effects.values())
    for channel in seen:
        assert fitted.removal_effects[channel] == pytest.approx(float(effects[channel]), abs=1e-9)
        expected = effects[channel] / total if total else 0
        assert float(fitted[channel]) == pytest.approx(float(expected), abs=1e-9)
    assert sum(fitted.values()) == (1 if total else 0)
    attributed = sum(p.count for p in paths if p.converted and p.channels)
    assert fitted.attributed_conversions == attributed
    assert sum(fitted.conversions.values()) == (attributed if total else 0)


@settings(deadline=None)
@given(path_sets)
def test_shapley_agrees_with_the_permutation_definition(paths: list[Path]) -> None:
    fitted = fit_shapley(paths)
    reference = reference_shapley(paths)
    for channel in {c for p in paths for c in p.channels}:
        assert fitted.conversions[channel] == reference.get(channel, 0)
    attributed = sum(p.count for p in paths if p.converted and p.channels)
    assert fitted.attributed_conversions == attributed
    assert sum(fitted.conversions.values()) == attributed
    assert sum(fitted.values()) == (1 if attributed else 0)


@given(
    st.dictionaries(
        st.frozensets(st.sampled_from("abcdefghij"), min_size=1),
        st.integers(1, 50),
        max_size=12,
    )
)
def test_shapley_simplified_form_equals_the_definition(
    exact_sets: dict[frozenset[str], int],
) -> None:
    """Zhao et al. 2018 (arXiv:1804.05327): for this worth function the simplified form
    (each conversion shared equally by its distinct channels) IS the Shapley value, so
    switching to it above SHAPLEY_EXACT_MAX_CHANNELS changes the cost, not the result."""
    players = sorted({c for channel_set in exact_sets for c in channel_set})
    assert len(players) <= SHAPLEY_EXACT_MAX_CHANNELS
    assert shapley_module.by_definition(players, exact_sets) == shapley_module.simplified(
        exact_sets
    )


def test_shapley_above_the_exact_limit_still_sums_to_the_conversions() -> None:
    many = [f"li-{i:02d}" for i in range(SHAPLEY_EXACT_MAX_CHANNELS + 8)]
    paths = [Path(tuple(many[i : i + 3]), True, i + 1) for i in range(len(many) - 2)]
    fitted = fit_shapley(paths)
    assert sum(fitted.conversions.values()) == sum(p.count for p in paths)
    assert fitted["li-00"] == Fraction(1, 3) / sum(p.count for p in paths)


@given(path_sets, st.sampled_from([fit_markov, fit_shapley]))
def test_channels_only_on_non_converting_paths_get_nothing(
    paths: list[Path], fit: Callable[[Iterable[Path]], DataDrivenWeights]
) -> None:
    only_lost = [*paths, Path(("never",), False, 5), Path(("a", "never"), False)]
    weights = fit(only_lost)
    assert weights["never"] == 0
    assert weights.conversions["never"] == 0


@settings(deadline=None)
@given(path_sets, st.sampled_from([Model.MARKOV, Model.SHAPLEY]), st.integers(0, 10**9))
def test_fitted_credits_sum_to_one_and_to_the_value(
    paths: list[Path], model: Model, value: int
) -> None:
    weights = fit_markov(paths) if model is Model.MARKOV else fit_shapley(paths)
    for path in paths:
        touches = [Touchpoint(f"e{i}", float(i), c) for i, c in enumerate(path.channels)]
        shares = credits(model, touches, 100.0, channel_weights=weights)
        assert len(shares) == len(touches)
        if touches:
            assert sum(shares) == 1
            assert all(s >= 0 for s in shares)
            assert sum(allocate_minor(value, shares)) == value


def test_weights_split_over_channels_then_equally_over_a_channels_touches() -> None:
    weights = {"a": Fraction(3, 4), "b": Fraction(1, 4), "c": Fraction(0)}
    touches = [
        Touchpoint("1", 1.0, "a"),
        Touchpoint("2", 2.0, "b"),
        Touchpoint("3", 3.0, "a"),
        Touchpoint("4", 4.0, "c"),
    ]
    shares = credits(Model.MARKOV, touches, 5.0, channel_weights=weights)
    assert shares == [Fraction(3, 8), Fraction(1, 4), Fraction(3, 8), Fraction(0)]


def test_a_path_whose_channels_all_weigh_zero_falls_back_to_linear() -> None:
    fitted = fit_markov([Path(("a",), True), Path(("z",), False)])
    touches = [Touchpoint("1", 1.0, "z"), Touchpoint("2", 2.0, "unseen")]
    assert credits(Model.MARKOV, touches, 3.0, channel_weights=fitted) == [Fraction(1, 2)] * 2


def test_markov_worked_example_of_bryl() -> None:
    """S. Bryl, "Marketing Multi-Channel Attribution model with R (part 1: Markov chain
    concept)", analyzecore.com, 2016-08-03 (the example of Anderl et al. 2016's graph
    framework; also the test data of the JesseCastro/markovattribution package): paths
    C1 > C2 > C3 (converted), C1 and C2 > C3 (not). P(conversion) = 1/3, 1/6 without C1;
    removal effects 0.5, 1, 1; attributed conversions 0.2, 0.4, 0.4 (value 200, 400, 400
    of 1000)."""
    fitted = fit_markov(
        [Path(("C1", "C2", "C3"), True), Path(("C1",), False), Path(("C2", "C3"), False)]
    )
    assert fitted.conversion_probability == pytest.approx(1 / 3, abs=1e-12)
    assert fitted.removal_effects == pytest.approx({"C1": 0.5, "C2": 1.0, "C3": 1.0}, abs=1e-12)
    assert dict(fitted) == {"C1": Fraction(1, 5), "C2": Fraction(2, 5), "C3": Fraction(2, 5)}
    touches = [Touchpoint("1", 1.0, "C1"), Touchpoint("2", 2.0, "C2"), Touchpoint("3", 3.0, "C3")]
    shares = credits(Model.MARKOV, touches, 4.0, channel_weights=fitted)
    assert allocate_minor(1000_00, shares) == [200_00, 400_00, 400_00]


def test_markov_worked_example_of_puzyrov() -> None:
    """S. Puzyrov, "Markov Chain Attribution - Simple Explanation Of Removal Effect"
    (serhiipuzyrov.com, 2019): Google Ads alone converts twice and once not, mailing alone
    once, Google Ads > mailing once. P(conversion) = 0.8; without Google Ads 0.2, without
    mailing 0.4; removal effects 0.75 and 0.5, so of the 4 conversions Google Ads gets 2.4
    and mailing 1.6."""
    fitted = fit_markov(
        [
            Path(("google ads",), True, 2),
            Path(("mailing",), True),
            Path(("google ads", "mailing"), True),
            Path(("google ads",), False),
        ]
    )
    assert fitted.conversion_probability == pytest.approx(0.8, abs=1e-12)
    assert fitted.removal_effects == pytest.approx({"google ads": 0.75, "mailing": 0.5})
    assert fitted.conversions == {"google ads": Fraction(12, 5), "mailing": Fraction(8, 5)}


def test_shapley_worked_example() -> None:
    """The same paths under the simplified Shapley value of Zhao et al. 2018 (each
    conversion shared equally by its distinct channels): Google Ads 2 + 1/2, mailing
    1 + 1/2; the non-converting path adds nothing."""
    fitted = fit_shapley(
        [
            Path(("google ads",), True, 2),
            Path(("mailing",), True),
            Path(("google ads", "mailing"), True),
            Path(("google ads",), False),
        ]
    )
    assert fitted.conversions == {"google ads": Fraction(5, 2), "mailing": Fraction(3, 2)}
    assert dict(fitted) == {"google ads": Fraction(5, 8), "mailing": Fraction(3, 8)}


def test_identical_paths_count_like_their_copies() -> None:
    copies = [Path(("a", "b"), True)] * 3 + [Path(("b",), False)] * 2 + [Path(("a",), True)]
    counted = [Path(("a", "b"), True, 3), Path(("b",), False, 2), Path(("a",), True)]
    for fit in (fit_markov, fit_shapley):
        assert dict(fit(copies)) == dict(fit(counted))
        assert fit(copies).total_paths == 6


def test_markov_handles_two_hundred_channels() -> None:
    many = [f"li-{i:03d}" for i in range(200)]
    paths = [
        Path(
            (many[i % 200], many[(i * 7 + 3) % 200], many[(i * 13 + 5) % 200]),
            i % 3 == 0,
            1 + i % 4,
        )
        for i in range(2_000)
    ]
    fitted = fit_markov(paths)
    assert len(fitted) == 200
    assert sum(fitted.values()) == 1
    assert all(0 <= e <= 1 for e in fitted.removal_effects.values())


def test_nothing_converted_gives_zero_weights_and_linear_credits() -> None:
    for fit, model in ((fit_markov, Model.MARKOV), (fit_shapley, Model.SHAPLEY)):
        fitted = fit([Path(("a", "b"), False), Path((), False)])
        assert dict(fitted) == {"a": 0, "b": 0}
        touches = [Touchpoint("1", 1.0, "a"), Touchpoint("2", 2.0, "b")]
        assert credits(model, touches, 3.0, channel_weights=fitted) == [Fraction(1, 2)] * 2


@settings(deadline=None)
@given(path_sets, st.randoms(use_true_random=False))
def test_the_order_of_the_paths_never_changes_a_fit(paths: list[Path], rng: random.Random) -> None:
    shuffled = list(paths)
    rng.shuffle(shuffled)
    for fit in (fit_markov, fit_shapley):
        assert dict(fit(shuffled)) == dict(fit(paths))
        assert fit(shuffled).removal_effects == fit(paths).removal_effects
