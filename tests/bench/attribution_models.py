"""The attribution models alone (no SQL, no gRPC): fitting and crediting 100,000 conversions.

Journeys of 1 to 8 exposures over 50 line items (a skewed mix, as real campaigns have),
some exposures older than the 30-day window; 100,000 of them convert and three times as
many do not. Timed, each on its own: the window and Path building, `fit_markov` and
`fit_shapley` over all paths, `credits` for the 100,000 conversions under each of the
seven models, and `allocate_minor` of every conversion's value under linear credit.
`attribution_models_total_s` is window + both fits + all seven models + money, the
models' share of a report that computes every model (the report's budget is 10 s with
SQL). Each step prints its wall time (`..._s`) and the process's CPU time
(`..._cpu_s`): on the shared 2-core machine the CPU time is the steadier figure.
Single-threaded; BENCH_SCALE (default 1) scales the number of journeys.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TypeVar

from services.attribution.models import (
    DataDrivenWeights,
    Model,
    Path,
    Touchpoint,
    allocate_minor,
    credits,
    fit_markov,
    fit_shapley,
    in_window,
)

CONVERSIONS = max(1_000, int(100_000 * float(os.environ.get("BENCH_SCALE", "1"))))
NON_CONVERTING = 3 * CONVERSIONS
CHANNELS = [f"line-item-{i:02d}" for i in range(50)]
POPULARITY = [1 / (i + 1) for i in range(len(CHANNELS))]
DAY = 86_400.0
WINDOW_S = 30 * DAY

T = TypeVar("T")


def timed(label: str, work: Callable[[], T]) -> T:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    print(f"{label}_s: {time.perf_counter() - wall:.3f}")
    print(f"{label}_cpu_s: {time.process_time() - cpu:.3f}")
    return result


def journeys(rng: random.Random) -> list[tuple[list[Touchpoint], float, bool]]:
    made: list[tuple[list[Touchpoint], float, bool]] = []
    for n in range(CONVERSIONS + NON_CONVERTING):
        at = 90 * DAY
        size = rng.randint(1, 8)
        channels = rng.choices(CHANNELS, POPULARITY, k=size)
        touches = [
            Touchpoint(f"{n}-{k}", at - rng.uniform(0, 40 * DAY), channel)
            for k, channel in enumerate(channels)
        ]
        made.append((touches, at, n < CONVERSIONS))
    return made


def main() -> None:
    rng = random.Random(7)
    data = journeys(rng)
    wall, cpu = time.perf_counter(), time.process_time()
    windows = timed(
        "attribution_models_window",
        lambda: [(in_window(t, at, WINDOW_S), at, converted) for t, at, converted in data],
    )
    paths = [
        Path(tuple(t.channel for t in touches), converted) for touches, _, converted in windows
    ]
    conversions = [(touches, at) for touches, at, converted in windows if converted and touches]
    print(f"attribution_models_paths: {len(paths)}")
    print(f"attribution_models_attributed_conversions: {len(conversions)}")
    markov = timed("attribution_models_fit_markov", lambda: fit_markov(paths))
    shapley = timed("attribution_models_fit_shapley", lambda: fit_shapley(paths))
    fitted: dict[Model, DataDrivenWeights] = {Model.MARKOV: markov, Model.SHAPLEY: shapley}
    linear: list[list[Fraction]] = []
    for model in Model:
        weights = fitted.get(model)
        shares = timed(
            f"attribution_models_credit_{model.name.lower()}",
            lambda model=model, weights=weights: [  # type: ignore[misc]
                credits(model, touches, at, channel_weights=weights) for touches, at in conversions
            ],
        )
        if model is Model.LINEAR:
            linear = shares
    values = [rng.randint(100, 50_000) for _ in conversions]
    timed(
        "attribution_models_allocate",
        lambda: [allocate_minor(v, c) for v, c in zip(values, linear, strict=True)],
    )
    print(f"attribution_models_total_s: {time.perf_counter() - wall:.3f}")
    print(f"attribution_models_total_cpu_s: {time.process_time() - cpu:.3f}")


if __name__ == "__main__":
    main()
