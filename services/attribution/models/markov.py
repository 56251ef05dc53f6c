"""First-order Markov chain removal effect (Anderl et al. 2016), solved exactly, not simulated.

States: START, one per channel, and the absorbing CONVERSION and NULL. Transition
probabilities are the observed transition counts over all paths, converting and not
(a path `a > b` that converted adds START→a, a→b, b→CONVERSION; a path with no touches
adds START→CONVERSION or START→NULL). Removing a channel sends every transition into it
to NULL; its removal effect is the relative drop in the probability of converting from
START: RE(c) = 1 - P₋c(conv) / P(conv). Weights are the removal effects normalised to
sum to 1.

One solve gives every removal effect. With N = (I - Q)⁻¹ the fundamental matrix of the
transient states and h = N·r the probability of converting from each state, a walk from
START converts either without ever visiting c (exactly what survives c's removal) or
after reaching c, from where it converts with probability h(c). By the strong Markov
property P(conv) = P₋c(conv) + f(c)·h(c) with f(c) = N[START, c] / N[c, c] the
probability of ever visiting c, so RE(c) = f(c)·h(c) / h(START): one O(n³) inversion for
all n channels instead of n solves.

Arithmetic: float64 (numpy), because exact rational elimination of a 200-state chain
builds numerators and denominators of thousands of digits and takes seconds to minutes,
while the benchmark budget for a whole report is 10 s. The chain is well conditioned
(every state reaches absorption, as every observed transition lies on a path that
ended), so the removal effects carry ~1e-12 relative error. Each is then rounded to 12
decimal places, an integer count of 10^-12 (within that error; it gives back the exact
value of simple ratios such as the published examples' and keeps the numbers in the
per-conversion credits small), and the weights are those integers over their sum:
exact fractions summing to exactly 1, and so are the credits built from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from services.attribution.models.kinds import Model
from services.attribution.models.touchpoints import Path, aggregate
from services.attribution.models.weights import DataDrivenWeights

_GRID = 10**12


def fit_markov(paths: Iterable[Path]) -> DataDrivenWeights:
    journeys = aggregate(paths)
    channels = sorted({c for chain, _ in journeys for c in chain})
    # Row/column 0 is START, channels follow; two extra columns for CONVERSION, NULL.
    state = {channel: i + 1 for i, channel in enumerate(channels)}
    transient = len(channels) + 1
    conversion, null = transient, transient + 1
    # Counted in a dict first: a numpy item update per transition costs far more.
    transitions: dict[tuple[int, int], int] = {}
    attributed = 0
    converted_at_all = False
    total_paths = 0
    for (chain, converted), times in journeys.items():
        previous = 0
        for channel in chain:
            current = state[channel]
            step = (previous, current)
            transitions[step] = transitions.get(step, 0) + times
            previous = current
        step = (previous, conversion if converted else null)
        transitions[step] = transitions.get(step, 0) + times
        total_paths += times
        converted_at_all = converted_at_all or converted
        if converted and chain:
            attributed += times

    if not converted_at_all:
        zero = {channel: Fraction(0) for channel in channels}
        return DataDrivenWeights(
            Model.MARKOV,
            zero,
            dict(zero),
            0,
            total_paths,
            {channel: 0.0 for channel in channels},
            0.0,
        )

    counts = np.zeros((transient, transient + 2))
    for (source, target), times in transitions.items():
        counts[source, target] = times
    probabilities = counts / counts.sum(axis=1, keepdims=True)
    fundamental = np.linalg.inv(np.eye(transient) - probabilities[:, :transient])
    converts_from = fundamental @ probabilities[:, conversion]
    baseline = float(converts_from[0])
    effects: dict[str, float] = {}
    for channel, i in state.items():
        visited = fundamental[0, i] / fundamental[i, i]
        effects[channel] = min(1.0, max(0.0, float(visited * converts_from[i] / baseline)))

    grid = {channel: round(effect * _GRID) for channel, effect in effects.items()}
    total = sum(grid.values())
    weights = {c: Fraction(units, total) if total else Fraction(0) for c, units in grid.items()}
    return DataDrivenWeights(
        Model.MARKOV,
        weights,
        {channel: w * attributed for channel, w in weights.items()},
        attributed,
        total_paths,
        effects,
        baseline,
    )
