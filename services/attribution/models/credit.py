"""One conversion's credits under any model: one exact Fraction per in-window touch.

The touches are the conversion's in-window touches (`in_window`); they may come in any
order and are ordered here by (time, exposure id), and the credits follow that order.
No touches means an unattributed conversion: no credits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction

from services.attribution.models import heuristic
from services.attribution.models.kinds import Model
from services.attribution.models.touchpoints import Touchpoint, ordered
from services.attribution.models.weights import DataDrivenWeights, split

_ONE = Fraction(1)


def credits(
    model: Model | int,
    touches: Iterable[Touchpoint],
    conversion_time: float,
    *,
    half_life_s: float = heuristic.DEFAULT_HALF_LIFE_S,
    channel_weights: Mapping[str, Fraction] | None = None,
) -> list[Fraction]:
    kind = model if isinstance(model, Model) else Model(model)
    if not math.isfinite(conversion_time):
        raise ValueError("the conversion time must be finite")
    chain = ordered(touches)
    if not chain:
        return []
    if chain[-1].time > conversion_time:
        raise ValueError("a touch after the conversion cannot share its credit")
    if kind is Model.TIME_DECAY and not (math.isfinite(half_life_s) and half_life_s > 0):
        raise ValueError("the half-life must be a positive number of seconds")
    weights = _weights_for(kind, channel_weights)
    count = len(chain)
    # Every model gives a lone touch everything; lone touches are the commonest path.
    if count == 1:
        return [_ONE]
    if kind is Model.FIRST_TOUCH:
        return list(heuristic.first_touch(count))
    if kind is Model.LAST_TOUCH:
        return list(heuristic.last_touch(count))
    if kind is Model.LINEAR:
        return list(heuristic.linear(count))
    if kind is Model.POSITION_BASED:
        return list(heuristic.position_based(count))
    if kind is Model.TIME_DECAY:
        return list(heuristic.time_decay(chain, half_life_s))
    channels = tuple(t.channel for t in chain)
    if isinstance(weights, DataDrivenWeights):
        return list(weights.split(channels))
    return list(split(weights, channels))


def _weights_for(
    kind: Model, channel_weights: Mapping[str, Fraction] | None
) -> Mapping[str, Fraction]:
    if not kind.data_driven:
        return {}
    if channel_weights is None:
        raise ValueError(f"{kind.name} needs the channel weights fitted on the paths")
    if isinstance(channel_weights, DataDrivenWeights) and channel_weights.model is not kind:
        raise ValueError(f"weights fitted for {channel_weights.model.name}, not {kind.name}")
    return channel_weights
