"""Anomaly detection and forecasting over daily download series."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.queries.insights import (
    AnomalyDirection,
    InsufficientHistoryError,
    detect_anomalies,
    forecast,
)

# A Monday, so that offsets in a week are weekdays.
START = date(2025, 1, 6)
WORKWEEK = (1000, 1100, 1050, 980, 900, 400, 350)


def daily(values: Sequence[int]) -> list[tuple[date, int]]:
    return [(START + timedelta(days=i), value) for i, value in enumerate(values)]


def weekly(profile: Sequence[int], days: int) -> list[int]:
    return [profile[i % 7] for i in range(days)]


def noisy_weekly(days: int, seed: int, noise: float = 0.05) -> list[int]:
    rng = random.Random(seed)
    return [round(WORKWEEK[i % 7] * rng.uniform(1 - noise, 1 + noise)) for i in range(days)]


def test_flat_series_with_one_spike_flags_exactly_that_day() -> None:
    rng = random.Random(1)
    values = [rng.randint(95, 105) for _ in range(90)]
    values[60] = 400

    (anomaly,) = detect_anomalies(daily(values))

    assert anomaly.day == START + timedelta(days=60)
    assert anomaly.anomalous
    assert anomaly.direction is AnomalyDirection.SPIKE
    assert anomaly.actual_downloads == 400
    assert 95 <= anomaly.expected_downloads <= 105
    assert anomaly.expected_low <= anomaly.expected_downloads <= anomaly.expected_high < 400
    assert anomaly.deviation_score > 3.5


def test_weekly_pattern_with_quiet_weekends_flags_nothing() -> None:
    values = noisy_weekly(120, seed=2)

    checks = detect_anomalies(daily(values), include_normal_days=True)

    assert [check.day for check in checks] == [START + timedelta(days=i) for i in range(28, 120)]
    for check in checks:
        assert not check.anomalous
        assert check.direction is None
        assert check.expected_low <= check.actual_downloads <= check.expected_high
        assert abs(check.deviation_score) <= 3.5
    weekend = [check for check in checks if check.day.weekday() >= 5]
    assert all(check.expected_downloads < 500 for check in weekend)


def test_a_drop_is_flagged_as_a_drop() -> None:
    values = noisy_weekly(100, seed=3)
    values[80] = 100

    (anomaly,) = detect_anomalies(daily(values))

    assert anomaly.day == START + timedelta(days=80)
    assert anomaly.direction is AnomalyDirection.DROP
    assert anomaly.deviation_score < -3.5
    assert anomaly.actual_downloads < anomaly.expected_low


def test_threshold_decides_what_is_anomalous() -> None:
    values = [100] * 60
    values[50] = 150

    assert detect_anomalies(daily(values), threshold=3.5)
    assert not detect_anomalies(daily(values), threshold=6.0)


def test_missing_days_count_as_zero() -> None:
    series = daily([100] * 60)
    del series[45]

    (anomaly,) = detect_anomalies(series)

    assert anomaly.day == START + timedelta(days=45)
    assert anomaly.actual_downloads == 0
    assert anomaly.direction is AnomalyDirection.DROP


def test_days_without_enough_history_are_not_checked() -> None:
    values = [100] * 60

    assert detect_anomalies(daily(values[:28]), include_normal_days=True) == []
    checks = detect_anomalies(daily(values), include_normal_days=True, min_history_days=42)
    assert checks[0].day == START + timedelta(days=42)
    assert detect_anomalies([]) == []


def test_anomaly_arguments_are_validated() -> None:
    series = daily([100] * 40)
    for threshold in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            detect_anomalies(series, threshold=threshold)
    with pytest.raises(ValueError, match="min_history_days"):
        detect_anomalies(series, min_history_days=21)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ([*daily([100] * 7), (START, 100)], "more than once"),
        (daily([100] * 6 + [-1]), "negative"),
    ],
)
def test_invalid_series_are_refused(series: list[tuple[date, int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect_anomalies(series)
    with pytest.raises(ValueError, match=message):
        forecast(series)


@settings(max_examples=50, deadline=None)
@given(
    history=st.lists(st.integers(0, 10_000), min_size=28, max_size=100),
    future=st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
)
def test_appending_days_never_changes_earlier_verdicts(
    history: list[int], future: list[int]
) -> None:
    before = detect_anomalies(daily(history), include_normal_days=True)
    after = detect_anomalies(daily(history + future), include_normal_days=True)

    assert after[: len(before)] == before
    assert len(after) == len(before) + len(future)


@settings(max_examples=50, deadline=None)
@given(
    profile=st.lists(st.integers(0, 100_000), min_size=7, max_size=7),
    weeks=st.integers(4, 12),
)
def test_pure_weekly_patterns_are_never_anomalous(profile: list[int], weeks: int) -> None:
    checks = detect_anomalies(daily(weekly(profile, 7 * weeks + 3)), include_normal_days=True)

    for check in checks:
        assert not check.anomalous
        assert check.expected_downloads == check.actual_downloads
        assert 0 <= check.expected_low <= check.expected_high


def test_forecast_of_a_pure_weekly_pattern_reproduces_it() -> None:
    result = forecast(daily(weekly(WORKWEEK, 70)))

    assert result.history_days == 70
    assert result.confidence_level == 0.95
    assert len(result.points) == 30
    for step, point in enumerate(result.points, start=1):
        assert point.day == START + timedelta(days=69 + step)
        assert point.predicted_downloads == pytest.approx(WORKWEEK[point.day.weekday()], abs=1e-6)


def test_forecast_follows_a_trend() -> None:
    values = [5 * i + WORKWEEK[i % 7] for i in range(140)]

    result = forecast(daily(values), horizon_days=7)

    for step, point in enumerate(result.points, start=1):
        expected = 5 * (139 + step) + WORKWEEK[point.day.weekday()]
        assert point.predicted_downloads == pytest.approx(expected, rel=0.01)


def test_forecast_intervals_contain_the_point_and_widen_with_the_horizon() -> None:
    # Lifted well above zero so that no bound is clipped and widths compare across days.
    values = [3000 + value for value in noisy_weekly(180, seed=4, noise=0.1)]

    narrow = forecast(daily(values), confidence_level=0.8)
    wide = forecast(daily(values), confidence_level=0.95)

    widths = [point.upper_bound - point.lower_bound for point in wide.points]
    assert all(later > earlier for earlier, later in itertools.pairwise(widths))
    for point, narrower in zip(wide.points, narrow.points, strict=True):
        assert point.lower_bound < point.predicted_downloads < point.upper_bound
        assert point.lower_bound <= narrower.lower_bound
        assert narrower.upper_bound <= point.upper_bound
        assert narrower.predicted_downloads == point.predicted_downloads


def test_forecast_of_a_collapsing_series_stays_non_negative() -> None:
    values = [max(0, 1000 - 25 * i) for i in range(60)]

    result = forecast(daily(values), horizon_days=90)

    assert len(result.points) == 90
    for point in result.points:
        assert 0 <= point.lower_bound <= point.predicted_downloads <= point.upper_bound


def test_short_history_falls_back_to_last_week() -> None:
    values = [10, 20, 30, 40, 50, 5, 3, 12, 22, 28]

    result = forecast(daily(values), horizon_days=14)

    assert result.history_days == 10
    assert [point.predicted_downloads for point in result.points] == [
        values[3 + i % 7] for i in range(14)
    ]


@pytest.mark.parametrize("days", [0, 1, 6])
def test_forecast_refuses_less_than_a_week(days: int) -> None:
    with pytest.raises(InsufficientHistoryError, match="at least 7 days"):
        forecast(daily([100] * days))


def test_forecast_can_start_after_a_gap() -> None:
    series = daily(noisy_weekly(100, seed=5))

    from_tomorrow = forecast(series, horizon_days=30)
    from_later = forecast(series, horizon_days=29, first_day=START + timedelta(days=101))

    assert from_later.points == from_tomorrow.points[1:]


def test_forecast_fits_at_most_a_year() -> None:
    assert forecast(daily(noisy_weekly(500, seed=6))).history_days == 365


def test_forecast_arguments_are_validated() -> None:
    series = daily([100] * 14)
    for horizon_days in (0, 91):
        with pytest.raises(ValueError, match="horizon_days") as error:
            forecast(series, horizon_days=horizon_days)
    for confidence_level in (0.0, 1.0, math.nan):
        with pytest.raises(ValueError, match="confidence_level") as error:
            forecast(series, confidence_level=confidence_level)
    with pytest.raises(ValueError, match="first_day") as error:
        forecast(series, first_day=START + timedelta(days=13))
    # Only too little history is a failed precondition; the rest are invalid arguments.
    assert not isinstance(error.value, InsufficientHistoryError)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 1_000_000), min_size=7, max_size=400),
    horizon=st.integers(1, 90),
    confidence=st.floats(0.01, 0.99),
)
def test_any_series_gives_ordered_non_negative_forecasts(
    values: list[int], horizon: int, confidence: float
) -> None:
    result = forecast(daily(values), horizon_days=horizon, confidence_level=confidence)

    assert len(result.points) == horizon
    assert result.history_days == min(len(values), 365)
    last = START + timedelta(days=len(values) - 1)
    for step, point in enumerate(result.points, start=1):
        assert point.day == last + timedelta(days=step)
        assert all(
            math.isfinite(bound)
            for bound in (point.lower_bound, point.predicted_downloads, point.upper_bound)
        )
        assert 0 <= point.lower_bound <= point.predicted_downloads <= point.upper_bound
