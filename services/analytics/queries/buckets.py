"""Time buckets of metrics: hours, calendar days, ISO weeks and months of an IANA zone.

Bucket bounds are computed here, exactly across DST changes (a local day may last 23
or 25 hours), and handed to SQL as arrays for `width_bucket`, so the database groups
rows by bucket without knowing any time-zone rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Granularity(enum.IntEnum):
    """Values are podmesh.analytics.v1.Granularity."""

    HOUR = 1
    DAY = 2
    WEEK = 3
    MONTH = 4
    TOTAL = 5


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local date in `zone` is `day`.

    fold=0 maps a midnight skipped by DST to the end of the gap, which is that instant.
    """
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def _bucket_date(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return day


def _next_date(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day + timedelta(days=7)
    if granularity is Granularity.MONTH:
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return day + timedelta(days=1)


@dataclass(frozen=True)
class Buckets:
    """Consecutive buckets covering a range: bucket i is [starts[i], starts[i+1] or end)."""

    granularity: Granularity
    zone: ZoneInfo
    starts: tuple[datetime, ...]
    end: datetime
    # The local dates the buckets start on; empty for hourly buckets.
    start_dates: tuple[date, ...]
    end_date: date | None

    @property
    def start(self) -> datetime:
        return self.starts[0]

    @property
    def hour_aligned(self) -> bool:
        """Whether every bound is a whole UTC hour, so the hourly cube can fill the buckets."""
        return all(
            b.minute == 0 and b.second == 0 and b.microsecond == 0 for b in (*self.starts, self.end)
        )

    def index_of_date(self, day: date) -> int:
        """The bucket of a local date (daily cubes), by the same rule as SQL's width_bucket."""
        low, high = 0, len(self.start_dates)
        while low < high:
            middle = (low + high) // 2
            if self.start_dates[middle] <= day:
                low = middle + 1
            else:
                high = middle
        return low - 1


def make_buckets(
    start: datetime, end: datetime, granularity: Granularity, zone: ZoneInfo
) -> Buckets:
    """Buckets from the one containing `start` to the one containing the instant before `end`.

    Hours are UTC hours (the local hours of every zone whose offset is whole hours). Days,
    weeks (ISO, from Monday) and months are local; TOTAL is one bucket of whole local days.
    """
    if end <= start:
        raise ValueError("end must be after start")
    if granularity is Granularity.HOUR:
        first, last = _floor_hour(start), _ceil_hour(end)
        count = int((last - first) / HOUR)
        return Buckets(
            granularity, zone, tuple(first + i * HOUR for i in range(count)), last, (), None
        )
    first_date = _bucket_date(local_date(start, zone), granularity)
    last_instant = end - timedelta(microseconds=1)
    last_date = local_date(last_instant, zone)
    if granularity is Granularity.TOTAL:
        end_date = last_date + timedelta(days=1)
        return Buckets(
            granularity,
            zone,
            (day_start(first_date, zone),),
            day_start(end_date, zone),
            (first_date,),
            end_date,
        )
    dates = [first_date]
    while (following := _next_date(dates[-1], granularity)) <= last_date:
        dates.append(following)
    end_date = _next_date(dates[-1], granularity)
    return Buckets(
        granularity,
        zone,
        tuple(day_start(d, zone) for d in dates),
        day_start(end_date, zone),
        tuple(dates),
        end_date,
    )
