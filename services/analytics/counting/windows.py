"""Counting windows and the time arithmetic behind them.

Times are integers: microseconds since the Unix epoch, UTC (``time_us``). That
is PostgreSQL's resolution and ``google.protobuf.Timestamp.ToMicroseconds()``,
and it keeps the hot path free of ``datetime`` objects. Convert at the edges
with :func:`to_us` and :func:`from_us`.

A counting window is what makes repeated requests one download (ARCHITECTURE.md
section 8, rule 4):

- ``UTC_DAY`` (the default): the UTC calendar day of the request.
- ``TENANT_DAY``: the calendar day in the tenant's IANA time zone.
  :class:`CalendarDays` gives its bounds, DST days (23 or 25 hours) included.
- ``ROLLING_24H``: 24 hours from a listener's first request for an episode; the
  first request at or after the end starts the next window, and so on. The
  windows depend on the listener's whole time-ordered history for the episode,
  so the counting code, not this module, draws them.

A window is identified by its start instant (``window_start_us``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo

SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US
DAY_US = 24 * HOUR_US

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu"})
# Bounds the per-hour cache of CalendarDays: about eleven years of hours.
_MAX_CACHED_HOURS = 100_000


class CountingWindow(IntEnum):
    """The tenant's de-duplication window; values are podmesh.tenant.v1.CountingWindow."""

    UTC_DAY = 1
    TENANT_DAY = 2
    ROLLING_24H = 3


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a time zone (e.g. tzinfo=UTC)")
    return (moment - _EPOCH) // _ONE_US


def from_us(time_us: int) -> datetime:
    """The aware UTC datetime of a microsecond timestamp."""
    return _EPOCH + timedelta(microseconds=time_us)


class CalendarDays:
    """Calendar days of one IANA time zone as ``[start_us, end_us)`` windows.

    Exact across DST changes and odd offsets: a day starts at the first instant
    whose local date is that day (so a midnight skipped by DST starts the day at
    the end of the gap). Bounds are cached per UTC hour because a day boundary
    falls inside at most one hour and requests cluster in time.
    """

    __slots__ = ("_hours", "_tz", "_utc", "time_zone")

    def __init__(self, time_zone: str = "UTC") -> None:
        self.time_zone = time_zone
        self._utc = time_zone in _UTC_NAMES
        self._tz = ZoneInfo(time_zone)
        # UTC hour -> (split_us, start_before, end_before, start_after, end_after)
        self._hours: dict[int, tuple[int, int, int, int, int]] = {}

    def bounds(self, time_us: int) -> tuple[int, int]:
        """Start (inclusive) and end (exclusive) of the day containing ``time_us``."""
        if self._utc:
            start = time_us - time_us % DAY_US
            return start, start + DAY_US
        hour = time_us // HOUR_US
        entry = self._hours.get(hour)
        if entry is None:
            entry = self._hour_entry(hour)
        split, start, end, start_after, end_after = entry
        if time_us < split:
            return start, end
        return start_after, end_after

    def start(self, time_us: int) -> int:
        """Start of the day containing ``time_us``."""
        if self._utc:
            return time_us - time_us % DAY_US
        return self.bounds(time_us)[0]

    def _hour_entry(self, hour: int) -> tuple[int, int, int, int, int]:
        hour_start = hour * HOUR_US
        hour_end = hour_start + HOUR_US
        start, end = self._exact_bounds(hour_start)
        if end >= hour_end:
            entry = (hour_end, start, end, start, end)
        else:
            entry = (end, start, end, *self._exact_bounds(end))
        if len(self._hours) >= _MAX_CACHED_HOURS:
            self._hours.clear()
        self._hours[hour] = entry
        return entry

    def _exact_bounds(self, time_us: int) -> tuple[int, int]:
        local_date = from_us(time_us).astimezone(self._tz).date()
        return self._day_start(local_date), self._day_start(local_date + timedelta(days=1))

    def _day_start(self, day: date) -> int:
        # fold=0 maps a midnight inside a DST gap to the instant the gap ends,
        # which is the first instant carrying that local date.
        return to_us(datetime(day.year, day.month, day.day, tzinfo=self._tz))
