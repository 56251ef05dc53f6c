"""Counting windows: UTC days, tenant-time-zone days (DST included) and time conversions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.analytics.counting import DAY_US, CalendarDays, from_us, to_us

from .support import at

HOUR = 3_600_000_000
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Chatham",
]


def test_to_us_and_from_us_round_trip() -> None:
    moment = datetime(2024, 3, 4, 22, 15, 1, 123456, tzinfo=UTC)
    assert from_us(to_us(moment)) == moment
    assert to_us(moment.astimezone(timezone(timedelta(hours=5)))) == to_us(moment)


def test_to_us_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_us(datetime(2024, 3, 4))


def test_utc_day_window() -> None:
    days = CalendarDays()
    assert days.bounds(at("2024-03-04T23:59:59.999999")) == (
        at("2024-03-04T00:00:00"),
        at("2024-03-05T00:00:00"),
    )
    assert days.start(at("2024-03-05T00:00:00")) == at("2024-03-05T00:00:00")


def test_tenant_day_window_follows_the_time_zone() -> None:
    berlin = CalendarDays("Europe/Berlin")
    assert berlin.bounds(at("2024-03-04T23:30:00")) == (
        at("2024-03-04T23:00:00"),
        at("2024-03-05T23:00:00"),
    )
    assert berlin.start(at("2024-03-04T22:59:59")) == at("2024-03-03T23:00:00")


def test_tenant_day_window_is_23_hours_when_clocks_go_forward() -> None:
    start, end = CalendarDays("Europe/Berlin").bounds(at("2024-03-31T12:00:00"))
    assert (start, end - start) == (at("2024-03-30T23:00:00"), 23 * HOUR)


def test_tenant_day_window_is_25_hours_when_clocks_go_back() -> None:
    start, end = CalendarDays("Europe/Berlin").bounds(at("2024-10-27T12:00:00"))
    assert (start, end - start) == (at("2024-10-26T22:00:00"), 25 * HOUR)


def test_tenant_day_skipping_midnight_starts_when_the_gap_ends() -> None:
    # Chile moves from 00:00 to 01:00 on 8 September 2024.
    start, end = CalendarDays("America/Santiago").bounds(at("2024-09-08T12:00:00"))
    assert start == at("2024-09-08T01:00:00-03:00")
    assert end - start == 23 * HOUR


def test_tenant_day_that_does_not_exist_has_no_window() -> None:
    # Samoa skipped 30 December 2011: the 29th ends where the 31st begins.
    apia = CalendarDays("Pacific/Apia")
    _, end_29th = apia.bounds(at("2011-12-29T12:00:00-10:00"))
    start_31st, _ = apia.bounds(at("2011-12-31T12:00:00+14:00"))
    assert end_29th == start_31st


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(KeyError):
        CalendarDays("Mars/Olympus_Mons")


@given(
    st.integers(at("1971-01-01T00:00:00"), at("2099-12-31T00:00:00")),
    st.sampled_from(ZONES),
)
def test_tenant_day_window_is_exactly_the_local_date(time_us: int, zone: str) -> None:
    tz = ZoneInfo(zone)
    days = CalendarDays(zone)

    def local_date(t: int) -> object:
        return from_us(t).astimezone(tz).date()

    start, end = days.bounds(time_us)
    assert start <= time_us < end
    assert local_date(start) == local_date(end - 1) == local_date(time_us)
    assert local_date(start - 1) != local_date(time_us) != local_date(end)
    assert 22 * HOUR <= end - start <= 26 * HOUR or zone == "Pacific/Apia"
    assert days.bounds(time_us) == (start, end)


def test_utc_day_is_24_hours() -> None:
    start, end = CalendarDays("Etc/UTC").bounds(at("2024-06-30T23:59:59"))
    assert end - start == DAY_US
