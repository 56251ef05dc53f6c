"""Unique listeners per day, ISO week and month, and the HyperLogLog member format."""

from __future__ import annotations

from datetime import date

import pytest

from services.analytics.counting import (
    Period,
    count_downloads,
    hll_member,
    listeners_by_period,
    period_start,
)

from .support import APPLE_PODCASTS, MEDIA, SPOTIFY, at, request


def test_period_starts_are_day_iso_week_monday_and_month() -> None:
    sunday = at("2024-03-10T12:00:00")
    assert period_start(sunday, Period.DAY) == date(2024, 3, 10)
    assert period_start(sunday, Period.WEEK) == date(2024, 3, 4)
    assert period_start(sunday, Period.MONTH) == date(2024, 3, 1)


def test_period_start_follows_the_time_zone() -> None:
    late_sunday_utc = at("2024-03-10T23:30:00")
    assert period_start(late_sunday_utc, Period.WEEK, "Europe/Berlin") == date(2024, 3, 11)
    assert period_start(at("2024-03-31T23:30:00"), Period.MONTH, "Asia/Tokyo") == date(2024, 4, 1)


def test_listeners_are_unique_per_period_and_not_additive() -> None:
    downloads = count_downloads(
        [
            request("2024-03-04T10:00:00"),
            request("2024-03-05T10:00:00"),
            request("2024-03-05T11:00:00", ua=SPOTIFY),
            request("2024-03-06T10:00:00", ua=SPOTIFY, episode="ep-2"),
        ],
        MEDIA,
    ).downloads
    days = listeners_by_period(downloads, Period.DAY)
    assert [len(days[(date(2024, 3, d), None)]) for d in (4, 5, 6)] == [1, 2, 1]
    assert len(listeners_by_period(downloads, Period.WEEK)[(date(2024, 3, 4), None)]) == 2
    by_episode = listeners_by_period(downloads, Period.MONTH, group=lambda d: d.episode_id)
    assert {k: len(v) for k, v in by_episode.items()} == {
        (date(2024, 3, 1), "ep-1"): 2,
        (date(2024, 3, 1), "ep-2"): 1,
    }


def test_hll_member_is_the_listener_id() -> None:
    listener = request(ua=APPLE_PODCASTS).listener_id
    assert hll_member(listener) == listener
    with pytest.raises(ValueError, match="16 bytes"):
        hll_member(b"short")
