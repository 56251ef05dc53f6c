"""Attribution models: pure domain code, no gRPC and no SQL.

- kinds: Model, numbered as podmesh.type.v1.AttributionModel.
- touchpoints: Touchpoint, Path, in_window (the window and the tie-free order).
- heuristic: first touch, last touch, linear, time decay, position based.
- markov, shapley: the data-driven models, fitted on paths into DataDrivenWeights.
- weights: how fitted channel weights become one conversion's credits.
- credit: `credits`, one exact Fraction per touch, summing to 1, for any model.
- money: `allocate_minor`, a value in minor units shared by credits to the unit.
"""

from services.attribution.models.credit import credits
from services.attribution.models.heuristic import DEFAULT_HALF_LIFE_S
from services.attribution.models.kinds import Model
from services.attribution.models.markov import fit_markov
from services.attribution.models.money import allocate_minor
from services.attribution.models.shapley import SHAPLEY_EXACT_MAX_CHANNELS, fit_shapley
from services.attribution.models.touchpoints import Path, Touchpoint, in_window
from services.attribution.models.weights import DataDrivenWeights

__all__ = [
    "DEFAULT_HALF_LIFE_S",
    "SHAPLEY_EXACT_MAX_CHANNELS",
    "DataDrivenWeights",
    "Model",
    "Path",
    "Touchpoint",
    "allocate_minor",
    "credits",
    "fit_markov",
    "fit_shapley",
    "in_window",
]
