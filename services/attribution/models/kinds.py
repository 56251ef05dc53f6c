"""The attribution models, numbered as `podmesh.type.v1.AttributionModel`.

A plain IntEnum rather than the generated enum so the domain package imports nothing
generated; `tests/unit/test_attribution_models.py` holds the numbers to the proto's.
"""

from __future__ import annotations

import enum


class Model(enum.IntEnum):
    FIRST_TOUCH = 1
    LAST_TOUCH = 2
    LINEAR = 3
    TIME_DECAY = 4
    POSITION_BASED = 5
    MARKOV = 6
    SHAPLEY = 7

    @property
    def data_driven(self) -> bool:
        return self in (Model.MARKOV, Model.SHAPLEY)
