"""The counting funnel's rollup (counting_funnel, migration 0040): written by ingestion
and RebuildCounts in their counting transactions, read by GetCountingFunnel
(services.analytics.queries.funnel_report).

Rows are requests per (zone, day, episode, outcome, filter reason, counting day): the
funnel of services.analytics.counting.funnel summed by the day of each request's time,
in UTC and (when the tenant's zone is not UTC) in the tenant's zone, as rollup_daily
keeps downloads. The counting day, the day of the counting window's calendar the
request falls in, is what a rebuild replaces: it recounts whole counting days.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import asyncpg

from services.analytics.counting import DAY_US, CalendarDays, CountingWindow, from_us
from services.analytics.counting.funnel import FunnelKey
from services.shared.timezones import UTC_NAMES

_EPOCH_DATE = dt.date(1970, 1, 1)

# (zone, day, episode, outcome, reason, counting day)
RowKey = tuple[str, dt.date, str, str, str, dt.date]
# What a request's time decides about its row: its counting day, and its day per zone.
Bucket = tuple[dt.date, tuple[tuple[str, dt.date], ...]]
# Bucket cache granule: every zone's day boundaries fall on quarter hours (UTC offsets
# are multiples of 15 minutes), and a granule that holds one is never cached.
_GRANULE_US = 15 * 60 * 1_000_000


@lru_cache(maxsize=512)
def _calendar(time_zone: str) -> CalendarDays:
    return CalendarDays(time_zone)


def counting_zone(window: CountingWindow, time_zone: str) -> str:
    """The zone of the counting days a rebuild recounts one by one."""
    return time_zone if window is CountingWindow.TENANT_DAY else "UTC"


class _Days:
    """Local dates of instants in one zone, cached per day start."""

    def __init__(self, time_zone: str) -> None:
        self._utc = time_zone in UTC_NAMES
        self._calendar = _calendar(time_zone)
        self._zone = ZoneInfo(time_zone)
        self._dates: dict[int, dt.date] = {}

    def date(self, time_us: int) -> dt.date:
        if self._utc:
            return _EPOCH_DATE + dt.timedelta(days=time_us // DAY_US)
        start = self._calendar.start(time_us)
        found = self._dates.get(start)
        if found is None:
            found = self._dates[start] = from_us(start).astimezone(self._zone).date()
        return found


@dataclass(frozen=True)
class FunnelScope:
    """How a tenant's funnel rows are keyed: its counting window and time zone."""

    window: CountingWindow
    time_zone: str

    def counting_date(self, day_start_us: int) -> dt.date:
        """The counting day starting at ``day_start_us``."""
        return _Days(counting_zone(self.window, self.time_zone)).date(day_start_us)


class FunnelRollup:
    """Funnel deltas of one transaction, summed per row before they are written."""

    def __init__(self, scope: FunnelScope) -> None:
        self._counting = _Days(counting_zone(scope.window, scope.time_zone))
        self._zones: tuple[tuple[str, _Days], ...] = (("UTC", _Days("UTC")),) + (
            (("local", _Days(scope.time_zone)),) if scope.time_zone not in UTC_NAMES else ()
        )
        self.rows: dict[RowKey, int] = defaultdict(int)
        self._buckets: dict[int, Bucket] = {}

    def bucket(self, time_us: int) -> Bucket:
        """The counting day and the zones' days of an instant."""
        granule = time_us // _GRANULE_US
        found = self._buckets.get(granule)
        if found is not None:
            return found
        first = self._exact(granule * _GRANULE_US)
        if self._exact((granule + 1) * _GRANULE_US - 1) != first:
            return self._exact(time_us)
        self._buckets[granule] = first
        return first

    def _exact(self, time_us: int) -> Bucket:
        return (
            self._counting.date(time_us),
            tuple((zone, days.date(time_us)) for zone, days in self._zones),
        )

    def add(self, funnel: Mapping[FunnelKey[Bucket], int]) -> None:
        for (episode, (counting_day, days), outcome, reason), n in funnel.items():
            text = reason.value if reason is not None else ""
            for zone, day in days:
                self.rows[(zone, day, episode, outcome.value, text, counting_day)] += n

    async def write(
        self, conn: asyncpg.Connection, tenant_id: uuid.UUID, podcasts: Mapping[str, str]
    ) -> None:
        """Adds the deltas to the stored rows; rows brought to zero go, so the table holds
        the same rows however its requests arrived (and as a rebuild writes them)."""
        rows = [(k, n) for k, n in self.rows.items() if n]
        if not rows:
            return
        await conn.execute(
            """
            INSERT INTO counting_funnel AS f (tenant_id, zone, day, episode_id, outcome, reason,
                counting_day, podcast_id, requests)
            SELECT $1, * FROM unnest($2::text[], $3::date[], $4::uuid[], $5::text[], $6::text[],
                $7::date[], $8::uuid[], $9::int8[])
            ON CONFLICT (tenant_id, zone, day, episode_id, outcome, reason, counting_day)
            DO UPDATE SET requests = f.requests + EXCLUDED.requests
            """,
            tenant_id,
            *_columns(rows, podcasts),
        )
        lowered = [k for k, n in rows if n < 0]
        if lowered:
            await conn.execute(
                """
                DELETE FROM counting_funnel f
                USING unnest($2::text[], $3::date[], $4::uuid[], $5::text[], $6::text[],
                    $7::date[]) AS k(zone, day, episode_id, outcome, reason, counting_day)
                WHERE f.tenant_id = $1 AND f.zone = k.zone AND f.day = k.day
                    AND f.episode_id = k.episode_id AND f.outcome = k.outcome
                    AND f.reason = k.reason AND f.counting_day = k.counting_day
                    AND f.requests = 0
                """,
                tenant_id,
                *([key[i] for key in lowered] for i in range(6)),
            )


def _columns(rows: list[tuple[RowKey, int]], podcasts: Mapping[str, str]) -> list[list[object]]:
    columns: list[list[object]] = [[key[i] for key, _ in rows] for i in range(6)]
    columns.append([podcasts[key[2]] for key, _ in rows])
    columns.append([n for _, n in rows])
    return columns


async def forget_counting_day(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, episodes: Iterable[str], counting_day: dt.date
) -> None:
    """Deletes what a rebuild recounts: the counting day's rows of these episodes, except
    duplicates, which raw requests do not remember (a resend is never stored)."""
    await conn.execute(
        """
        DELETE FROM counting_funnel
        WHERE tenant_id = $1 AND episode_id = ANY($2::uuid[]) AND counting_day = $3
            AND outcome <> 'duplicate'
        """,
        tenant_id,
        list(episodes),
        counting_day,
    )
