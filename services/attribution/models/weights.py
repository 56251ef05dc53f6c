"""Fitted channel weights of a data-driven model, and how they become one conversion's credits.

A conversion's credit is split over the distinct channels of its path in proportion to
their weights, and a channel's share equally over its touches in that path. When every
channel of the path weighs zero (all of them unseen in the fit, or never leading to a
conversion there) the conversion falls back to linear credit, so the credits of every
attributed conversion still sum to exactly 1. The split depends only on the sequence of
channels, so it is computed once per distinct path shape and kept as long as the fitted
weights (one report's lifetime).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm

from services.attribution.models.heuristic import linear
from services.attribution.models.kinds import Model


@dataclass(frozen=True, eq=False)
class DataDrivenWeights(Mapping[str, Fraction]):
    """Channel -> weight (exact, summing to 1 unless nothing converted: then all zero).

    `conversions` is what the model attributes to each channel over the fitted paths
    (weight * `attributed_conversions` for Markov, the Shapley value for Shapley);
    `attributed_conversions` counts the converting paths with at least one touch.
    `removal_effects` (Markov only) is each channel's removal effect, and
    `conversion_probability` (Markov only) the chain's probability of converting from
    the start, both as computed in float64.
    """

    model: Model
    weights: Mapping[str, Fraction]
    conversions: Mapping[str, Fraction]
    attributed_conversions: int
    total_paths: int
    removal_effects: Mapping[str, float] = field(default_factory=dict)
    conversion_probability: float | None = None
    _numerators: dict[str, int] = field(init=False, repr=False)
    _splits: dict[tuple[str, ...], tuple[Fraction, ...]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_numerators", integer_weights(self.weights))

    def __getitem__(self, channel: str) -> Fraction:
        return self.weights[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def split(self, channels: tuple[str, ...]) -> tuple[Fraction, ...]:
        cached = self._splits.get(channels)
        if cached is None:
            cached = split_proportionally(self._numerators, channels)
            self._splits[channels] = cached
        return cached


def integer_weights(weights: Mapping[str, Fraction | int]) -> dict[str, int]:
    """The weights as integers over their common denominator: same proportions, exact,
    and each conversion's split then costs one Fraction per distinct channel."""
    exact = {channel: Fraction(weight) for channel, weight in weights.items()}
    if any(weight < 0 for weight in exact.values()):
        raise ValueError("channel weights must not be negative")
    common = lcm(*(weight.denominator for weight in exact.values()))
    return {c: w.numerator * (common // w.denominator) for c, w in exact.items()}


def split(weights: Mapping[str, Fraction], channels: tuple[str, ...]) -> tuple[Fraction, ...]:
    relevant = {channel: weights.get(channel, Fraction(0)) for channel in set(channels)}
    return split_proportionally(integer_weights(relevant), channels)


def split_proportionally(
    numerators: Mapping[str, int], channels: tuple[str, ...]
) -> tuple[Fraction, ...]:
    touches_of: dict[str, int] = {}
    for channel in channels:
        touches_of[channel] = touches_of.get(channel, 0) + 1
    total = sum(numerators.get(channel, 0) for channel in touches_of)
    if total == 0:
        return linear(len(channels))
    share = {c: Fraction(numerators.get(c, 0), total * k) for c, k in touches_of.items()}
    return tuple(share[channel] for channel in channels)
