"""Anomaly detection and forecasting over daily downloads, in pure Python.

The analytics servicer reads a daily download series from the rollups and calls
`detect_anomalies` for DetectAnomalies and `forecast` for GetForecast; `DayCheck` and
`ForecastPoint` carry exactly the fields of the proto messages of the same names.

A series is an iterable of `(day, downloads)` pairs, in any order, each day at most once.
Days missing between the first and the last day count as zero downloads: a day without a
rollup row had no counted download. The series ends at its last pair, so a caller whose
last complete days had no downloads passes them as `(day, 0)`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import NamedTuple

SEASON_DAYS = 7

# Anomalies: the proto's default for DetectAnomaliesRequest.threshold.
DEFAULT_THRESHOLD = 3.5
MIN_BASELINE_WEEKS = 4
MAX_BASELINE_WEEKS = 8
# How much history before the first day to check the servicer should read.
ANOMALY_LOOKBACK_DAYS = MAX_BASELINE_WEEKS * SEASON_DAYS
LEVEL_DAYS = 28
MAD_TO_SIGMA = 1.4826
# Day-to-day swings of a few percent are normal for a podcast; without this floor a very
# regular series would turn them into anomalies.
RELATIVE_SIGMA_FLOOR = 0.05

# Forecasts: the proto's defaults and bounds for GetForecastRequest.
DEFAULT_HORIZON_DAYS = 30
MAX_HORIZON_DAYS = 90
DEFAULT_CONFIDENCE_LEVEL = 0.95
MIN_FORECAST_HISTORY_DAYS = SEASON_DAYS
MIN_HOLT_WINTERS_DAYS = 2 * SEASON_DAYS
# Older history barely moves a 90-day forecast and would only make the fit slower.
MAX_FIT_DAYS = 365


class InsufficientHistoryError(ValueError):
    """Too little history to forecast; the servicer answers FAILED_PRECONDITION."""


class AnomalyDirection(enum.Enum):
    SPIKE = "spike"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class DayCheck:
    """One day's downloads against the baseline (proto `DayCheck`)."""

    day: date
    actual_downloads: int
    expected_downloads: float
    expected_low: float
    expected_high: float
    deviation_score: float
    anomalous: bool
    direction: AnomalyDirection | None


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """The forecast for one day (proto `ForecastPoint`)."""

    day: date
    predicted_downloads: float
    lower_bound: float
    upper_bound: float


@dataclass(frozen=True, slots=True)
class Forecast:
    """The body of a `GetForecastResponse`, without the methodology."""

    points: tuple[ForecastPoint, ...]
    confidence_level: float
    history_days: int


def detect_anomalies(
    series: Iterable[tuple[date, int]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    include_normal_days: bool = False,
    min_history_days: int = MIN_BASELINE_WEEKS * SEASON_DAYS,
) -> list[DayCheck]:
    """Checks every day that has at least `min_history_days` of history before it.

    Returns the anomalous days, or every checked day with `include_normal_days`, oldest
    first. A day is judged only on the days before it, so appending days never changes
    the verdict on earlier ones. Raises ValueError on invalid arguments or series.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if min_history_days < MIN_BASELINE_WEEKS * SEASON_DAYS:
        raise ValueError(
            f"min_history_days must be at least {MIN_BASELINE_WEEKS * SEASON_DAYS}, "
            f"got {min_history_days}"
        )
    first_day, values = _dense(series)
    checks: list[DayCheck] = []
    for index in range(min_history_days, len(values)):
        check = _check_day(values, index, first_day + timedelta(days=index), threshold)
        if include_normal_days or check.anomalous:
            checks.append(check)
    return checks


def _check_day(values: Sequence[int], index: int, day: date, threshold: float) -> DayCheck:
    weeks = min(MAX_BASELINE_WEEKS, index // SEASON_DAYS)
    # Whole weeks, so that position 0 of the window falls on the day's own weekday.
    window = values[index - weeks * SEASON_DAYS : index]
    weekdays = [sorted(window[offset::SEASON_DAYS]) for offset in range(SEASON_DAYS)]
    # Each value against the median of the other weeks, as the day being checked will be:
    # residuals from a median that includes the value itself understate the spread.
    residuals = [
        value - _median_without(group, position)
        for group in weekdays
        for position, value in enumerate(group)
    ]
    center = _median(residuals)
    mad = _median([abs(residual - center) for residual in residuals])
    # Same-weekday medians follow a lasting change of level only once it fills half the
    # window; rescaling by the last four weeks against the whole window stops flagging it
    # after about two weeks instead of three.
    window_level = _median(window)
    recent_level = _median(values[index - LEVEL_DAYS : index])
    scale = recent_level / window_level if window_level > 0 else 1.0
    expected = _median(weekdays[0]) * scale
    # Counts carry at least Poisson noise, so a series with a zero MAD still has a band.
    sigma = max(
        MAD_TO_SIGMA * mad * scale,
        math.sqrt(expected),
        RELATIVE_SIGMA_FLOOR * expected,
        1.0,
    )
    actual = values[index]
    score = (actual - expected) / sigma
    anomalous = abs(score) > threshold
    direction = None
    if anomalous:
        direction = AnomalyDirection.SPIKE if score > 0 else AnomalyDirection.DROP
    return DayCheck(
        day=day,
        actual_downloads=actual,
        expected_downloads=expected,
        expected_low=max(0.0, expected - threshold * sigma),
        expected_high=expected + threshold * sigma,
        deviation_score=score,
        anomalous=anomalous,
        direction=direction,
    )


def forecast(
    series: Iterable[tuple[date, int]],
    *,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
    first_day: date | None = None,
) -> Forecast:
    """Forecasts `horizon_days` days from `first_day` (default: the day after the series).

    `first_day` lets the servicer fit on complete days only and still start tomorrow: the
    days in between are forecast but not returned. Raises InsufficientHistoryError with
    fewer than 7 days of history, ValueError on other invalid arguments or series.
    """
    if not 1 <= horizon_days <= MAX_HORIZON_DAYS:
        raise ValueError(f"horizon_days must be 1 to {MAX_HORIZON_DAYS}, got {horizon_days}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be between 0 and 1, got {confidence_level}")
    series_start, values = _dense(series)
    if len(values) < MIN_FORECAST_HISTORY_DAYS:
        raise InsufficientHistoryError(
            f"forecasting needs at least {MIN_FORECAST_HISTORY_DAYS} days of history, "
            f"got {len(values)}"
        )
    last_day = series_start + timedelta(days=len(values) - 1)
    start = first_day or last_day + timedelta(days=1)
    if start <= last_day:
        raise ValueError(f"first_day {start} is not after the last day of history {last_day}")
    skipped = (start - last_day).days - 1
    steps = skipped + horizon_days
    history = values[-MAX_FIT_DAYS:]
    if len(history) >= MIN_HOLT_WINTERS_DAYS:
        predictions, residuals = _holt_winters(history, steps)
    else:
        predictions, residuals = _seasonal_naive(history, steps)
    residuals.sort()
    # Clamped around zero so that the interval always contains the point forecast, even
    # when the model was biased in-sample.
    low_quantile = min(0.0, _quantile(residuals, (1 - confidence_level) / 2))
    high_quantile = max(0.0, _quantile(residuals, (1 + confidence_level) / 2))
    points = []
    for step in range(skipped + 1, steps + 1):
        point = predictions[step - 1]
        spread = math.sqrt(step)
        points.append(
            ForecastPoint(
                day=last_day + timedelta(days=step),
                predicted_downloads=max(0.0, point),
                lower_bound=max(0.0, point + low_quantile * spread),
                upper_bound=max(0.0, point + high_quantile * spread),
            )
        )
    return Forecast(
        points=tuple(points), confidence_level=confidence_level, history_days=len(history)
    )


def _seasonal_naive(values: Sequence[int], steps: int) -> tuple[list[float], list[float]]:
    n = len(values)
    predictions = [float(values[n - SEASON_DAYS + step % SEASON_DAYS]) for step in range(steps)]
    residuals = [float(values[t] - values[t - SEASON_DAYS]) for t in range(SEASON_DAYS, n)]
    if not residuals:
        # A single week has no same-weekday pairs; day-to-day changes, which include the
        # weekday swing, overstate the noise rather than claim there is none.
        residuals = [float(values[t] - values[t - 1]) for t in range(1, n)]
    return predictions, residuals


# Error-correction form (Hyndman, ETS(A,Ad,A)), within the usual bounds (beta at most
# alpha, gamma at most 1 - alpha), coarse enough for the whole grid to fit in milliseconds.
_GRID = tuple(
    (alpha, alpha * beta_share, gamma, phi)
    for alpha in (0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
    for beta_share in (0.0, 0.05, 0.2)
    for gamma in (0.0, 0.05, 0.15, 0.3)
    if gamma <= 1 - alpha
    for phi in (0.8, 0.9, 0.98)
)


def _holt_winters(values: Sequence[int], steps: int) -> tuple[list[float], list[float]]:
    first_mean = sum(values[:SEASON_DAYS]) / SEASON_DAYS
    second_mean = sum(values[SEASON_DAYS : 2 * SEASON_DAYS]) / SEASON_DAYS
    slope = (second_mean - first_mean) / SEASON_DAYS
    # The first week's mean sits at its middle day; level and trend start at its last day.
    middle = SEASON_DAYS // 2
    initial_season = [
        values[day] - (first_mean + (day - middle) * slope) for day in range(SEASON_DAYS)
    ]
    initial_level = first_mean + (SEASON_DAYS - 1 - middle) * slope

    best: _Run | None = None
    for params in _GRID:
        run = _smooth(values, params, initial_level, slope, initial_season, best)
        if run is not None:
            best = run
    # The first parameter set always runs to the end, so there is a best one.
    assert best is not None

    predictions = []
    damping = 0.0
    for step in range(1, steps + 1):
        damping += best.phi**step
        slot = (len(values) - 1 + step) % SEASON_DAYS
        predictions.append(best.level + damping * best.trend + best.season[slot])
    return predictions, best.errors


class _Run(NamedTuple):
    """A parameter set's one-step-ahead errors and the state it ends in."""

    sse: float
    errors: list[float]
    phi: float
    level: float
    trend: float
    season: list[float]


def _smooth(
    values: Sequence[int],
    params: tuple[float, float, float, float],
    level: float,
    trend: float,
    initial_season: Sequence[float],
    to_beat: _Run | None,
) -> _Run | None:
    """Runs the smoother over the history; None as soon as it cannot beat `to_beat`."""
    alpha, beta, gamma, phi = params
    give_up_above = math.inf if to_beat is None else to_beat.sse
    season = list(initial_season)
    errors = []
    sse = 0.0
    for t in range(SEASON_DAYS, len(values)):
        slot = t % SEASON_DAYS
        damped = phi * trend
        error = values[t] - (level + damped + season[slot])
        sse += error * error
        # Most of the grid loses to the best so far long before the end of the series.
        if sse >= give_up_above:
            return None
        errors.append(error)
        level += damped + alpha * error
        trend = damped + beta * error
        season[slot] += gamma * error
    return _Run(sse, errors, phi, level, trend, season)


def _dense(series: Iterable[tuple[date, int]]) -> tuple[date, list[int]]:
    pairs = sorted(series)
    if not pairs:
        return date.min, []
    first_day = pairs[0][0]
    values: list[int] = []
    previous: date | None = None
    for day, downloads in pairs:
        if day == previous:
            raise ValueError(f"day {day} appears more than once")
        if downloads < 0:
            raise ValueError(f"downloads must not be negative, got {downloads} on {day}")
        values.extend([0] * ((day - first_day).days - len(values)))
        values.append(downloads)
        previous = day
    return first_day, values


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def _median_without(ordered: Sequence[int], position: int) -> float:
    """The median of `ordered` without its element at `position`."""
    size = len(ordered) - 1
    middle = size // 2

    def rank(r: int) -> int:
        return ordered[r] if r < position else ordered[r + 1]

    if size % 2:
        return float(rank(middle))
    return (rank(middle - 1) + rank(middle)) / 2


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction
