"""Shapley value of each channel over the paths (Zhao, Mahboobi & Bagheri 2018), exact.

The game: the players are the channels that appear on converting paths; the worth of a
coalition S is the number of conversions whose path touched only channels of S,
v(S) = Σ_{T ⊆ S} R(T), with R(T) the conversions whose path's set of distinct channels
is exactly T (T non-empty: a conversion without touches is unattributed and outside the
game). The Shapley value is the textbook

    φ_j = Σ_{S ⊆ N - {j}} |S|! (n - |S| - 1)! / n! · (v(S + {j}) - v(S)).

Zhao et al. (arXiv:1804.05327, section 3) show that for this worth function it equals
the simplified form φ_j = Σ_{T ∋ j} R(T) / |T|: every conversion is shared equally by
the distinct channels on its path. Up to SHAPLEY_EXACT_MAX_CHANNELS players the value is
computed by the definition over all 2^n coalitions (the integer marginal contributions
summed per coalition size, so only n rational products per player); above it, by the
simplified form, which costs one pass over the distinct channel sets. The two are equal,
not an approximation (the tests hold them to each other); the limit only bounds the 2^n
cost. Channels seen only on non-converting paths are null players and get 0, as does
every channel when nothing converted. Weights are φ normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from math import factorial

from services.attribution.models.kinds import Model
from services.attribution.models.touchpoints import Path, aggregate
from services.attribution.models.weights import DataDrivenWeights

SHAPLEY_EXACT_MAX_CHANNELS = 12


def fit_shapley(paths: Iterable[Path]) -> DataDrivenWeights:
    journeys = aggregate(paths)
    seen = {c for chain, _ in journeys for c in chain}
    exact_sets: dict[frozenset[str], int] = {}
    total_paths = 0
    for (chain, converted), times in journeys.items():
        total_paths += times
        if converted and chain:
            key = frozenset(chain)
            exact_sets[key] = exact_sets.get(key, 0) + times
    players = sorted({c for channel_set in exact_sets for c in channel_set})
    if len(players) <= SHAPLEY_EXACT_MAX_CHANNELS:
        values = by_definition(players, exact_sets)
    else:
        values = simplified(exact_sets)
    attributed = sum(exact_sets.values())
    phi = {channel: values.get(channel, Fraction(0)) for channel in sorted(seen)}
    weights = {c: (v / attributed if attributed else Fraction(0)) for c, v in phi.items()}
    return DataDrivenWeights(Model.SHAPLEY, weights, phi, attributed, total_paths)


def by_definition(
    players: list[str], exact_sets: Mapping[frozenset[str], int]
) -> dict[str, Fraction]:
    n = len(players)
    bit = {player: 1 << i for i, player in enumerate(players)}
    worth = [0] * (1 << n)
    for channel_set, conversions in exact_sets.items():
        worth[sum(bit[c] for c in channel_set)] += conversions
    # Subset sums turn R(T) into v(S) = Σ_{T ⊆ S} R(T).
    for b in bit.values():
        for mask in range(1 << n):
            if mask & b:
                worth[mask] += worth[mask ^ b]
    coefficient = [Fraction(factorial(s) * factorial(n - s - 1), factorial(n)) for s in range(n)]
    values: dict[str, Fraction] = {}
    for player, b in bit.items():
        by_size = [0] * n
        for mask in range(1 << n):
            if not mask & b:
                by_size[mask.bit_count()] += worth[mask | b] - worth[mask]
        values[player] = sum(
            (coefficient[s] * total for s, total in enumerate(by_size)), Fraction(0)
        )
    return values


def simplified(exact_sets: Mapping[frozenset[str], int]) -> dict[str, Fraction]:
    values: dict[str, Fraction] = {}
    for channel_set, conversions in exact_sets.items():
        share = Fraction(conversions, len(channel_set))
        for channel in channel_set:
            values[channel] = values.get(channel, Fraction(0)) + share
    return values
