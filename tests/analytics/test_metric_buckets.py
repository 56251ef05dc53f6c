"""Time buckets of metrics reports: DST days, ISO weeks, months, odd offsets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.analytics.queries.buckets import Granularity, day_start, make_buckets
from services.shared.timezones import time_zone


def zone(name: str) -> ZoneInfo:
    found = time_zone(name)
    assert found is not None
    return found


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


BERLIN = zone("Europe/Berlin")


def test_spring_forward_day_is_23_hours_and_fall_back_day_25() -> None:
    spring = make_buckets(utc(2024, 3, 30, 12), utc(2024, 4, 1, 12), Granularity.DAY, BERLIN)
    assert spring.starts == (utc(2024, 3, 29, 23), utc(2024, 3, 30, 23), utc(2024, 3, 31, 22))
    assert spring.end == utc(2024, 4, 1, 22)
    assert spring.starts[2] - spring.starts[1] == timedelta(hours=23)

    autumn = make_buckets(utc(2024, 10, 26, 12), utc(2024, 10, 27, 23), Granularity.DAY, BERLIN)
    assert autumn.starts == (utc(2024, 10, 25, 22), utc(2024, 10, 26, 22))
    assert autumn.end == utc(2024, 10, 27, 23)
    assert autumn.end - autumn.starts[1] == timedelta(hours=25)
    assert autumn.start_dates == (date(2024, 10, 26), date(2024, 10, 27))


def test_hours_across_a_dst_change_are_real_hours() -> None:
    local_day = make_buckets(utc(2024, 3, 30, 23), utc(2024, 3, 31, 22), Granularity.HOUR, BERLIN)
    assert len(local_day.starts) == 23
    assert local_day.hour_aligned
    assert local_day.start_dates == ()


def test_hours_round_out_to_whole_hours() -> None:
    hours = make_buckets(utc(2024, 5, 1, 10, 30), utc(2024, 5, 1, 12, 5), Granularity.HOUR, BERLIN)
    assert hours.starts == (utc(2024, 5, 1, 10), utc(2024, 5, 1, 11), utc(2024, 5, 1, 12))
    assert hours.end == utc(2024, 5, 1, 13)


def test_a_midnight_skipped_by_dst_starts_the_day_when_the_gap_ends() -> None:
    santiago = zone("America/Santiago")
    # Clocks went from 23:59:59 on 7 September 2024 straight to 01:00 on the 8th.
    assert day_start(date(2024, 9, 8), santiago) == utc(2024, 9, 8, 4)
    days = make_buckets(utc(2024, 9, 7, 12), utc(2024, 9, 9, 3), Granularity.DAY, santiago)
    assert days.starts == (utc(2024, 9, 7, 4), utc(2024, 9, 8, 4))
    assert days.end - days.starts[1] == timedelta(hours=23)


def test_weeks_start_on_local_monday() -> None:
    # Sunday 7 April 2024, 23:30 in Berlin: still the week of Monday 1 April there.
    weeks = make_buckets(utc(2024, 4, 7, 21, 30), utc(2024, 4, 9), Granularity.WEEK, BERLIN)
    assert weeks.start_dates == (date(2024, 4, 1), date(2024, 4, 8))
    assert weeks.starts[0] == utc(2024, 3, 31, 22)
    assert weeks.end == utc(2024, 4, 14, 22)


def test_months_cross_the_year_and_dst() -> None:
    months = make_buckets(utc(2023, 11, 15), utc(2024, 4, 2), Granularity.MONTH, BERLIN)
    assert months.start_dates == tuple(
        date(y, m, 1)
        for y, m in ((2023, 11), (2023, 12), (2024, 1), (2024, 2), (2024, 3), (2024, 4))
    )
    assert months.starts[-1] == utc(2024, 3, 31, 22)
    assert months.end_date == date(2024, 5, 1)


def test_total_is_one_bucket_of_whole_local_days() -> None:
    total = make_buckets(utc(2024, 6, 1, 10), utc(2024, 6, 3, 1), Granularity.TOTAL, BERLIN)
    assert total.starts == (utc(2024, 5, 31, 22),)
    assert total.end == utc(2024, 6, 3, 22)
    assert total.start_dates == (date(2024, 6, 1),)
    assert total.end_date == date(2024, 6, 4)


def test_an_end_on_a_boundary_adds_no_empty_bucket() -> None:
    days = make_buckets(utc(2024, 6, 1), utc(2024, 6, 3), Granularity.DAY, zone("UTC"))
    assert days.start_dates == (date(2024, 6, 1), date(2024, 6, 2))
    assert days.end == utc(2024, 6, 3)


def test_half_hour_zones_are_not_hour_aligned() -> None:
    kolkata = make_buckets(utc(2024, 6, 1), utc(2024, 6, 3), Granularity.DAY, zone("Asia/Kolkata"))
    assert kolkata.starts[0] == utc(2024, 5, 31, 18, 30)
    assert not kolkata.hour_aligned
    assert make_buckets(utc(2024, 6, 1), utc(2024, 6, 3), Granularity.DAY, BERLIN).hour_aligned


@pytest.mark.parametrize(
    ("day", "index"),
    [(date(2024, 3, 31), -1), (date(2024, 4, 1), 0), (date(2024, 4, 7), 0), (date(2024, 4, 8), 1)],
)
def test_dates_find_their_bucket(day: date, index: int) -> None:
    weeks = make_buckets(utc(2024, 4, 1), utc(2024, 4, 15), Granularity.WEEK, zone("UTC"))
    assert weeks.index_of_date(day) == index


def test_unknown_zones_are_none() -> None:
    assert time_zone("Mars/Olympus_Mons") is None
    assert time_zone("../../etc/passwd") is None
    assert time_zone("Europe/Berlin") is not None


def test_the_range_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="end must be after start"):
        make_buckets(utc(2024, 1, 2), utc(2024, 1, 1), Granularity.DAY, BERLIN)
