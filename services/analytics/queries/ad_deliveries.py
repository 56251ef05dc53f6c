"""Ads delivered per ad slot and day, each slot within its own time range: what
campaign pacing reads (CountAdDeliveries).

Whole days of a range come from the daily ad slot rollup of the tenant's time zone.
A range that starts or ends inside a day (a flight that is not aligned to midnight)
has that partial day counted exactly from the counted ad deliveries, read by the
time index for at most one day per distinct range end; flights on day boundaries
never read them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeAlias

import asyncpg

from services.analytics.peers import ClockSource
from services.analytics.queries.buckets import day_start, local_date
from services.shared.db import Database
from services.shared.errors import InvalidArgument
from services.shared.timezones import time_zone
from services.shared.validation import Violations

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
MAX_RANGES = 1000
MAX_RANGE = timedelta(days=400)
MAX_GROUP_KEY = 200


@dataclass(frozen=True)
class SlotRange:
    ad_slot_id: uuid.UUID
    episode_id: uuid.UUID
    start: datetime
    end: datetime
    group_key: str = ""


@dataclass(frozen=True)
class SlotDeliveries:
    range: SlotRange
    total: int
    # (start of the local day, ads delivered), oldest first, days with deliveries only;
    # empty for a range of a group.
    days: list[tuple[datetime, int]]


@dataclass(frozen=True)
class GroupDeliveries:
    group_key: str
    total: int
    days: list[tuple[datetime, int]]


@dataclass(frozen=True)
class AdDeliveryCounts:
    ranges: list[SlotDeliveries]
    groups: list[GroupDeliveries]
    time_zone: str
    complete_until: datetime


def check_ranges(ranges: Sequence[SlotRange]) -> None:
    v = Violations()
    v.check(len(ranges) <= MAX_RANGES, "ranges", f"at most {MAX_RANGES} ranges")
    for i, r in enumerate(ranges):
        v.check(len(r.group_key) <= MAX_GROUP_KEY, f"ranges[{i}].group_key", "too long")
        if v.check(r.end > r.start, f"ranges[{i}].end_time", "must be after start_time"):
            v.check(r.end - r.start <= MAX_RANGE, f"ranges[{i}].end_time", "at most 400 days")
    v.raise_if_any()


class AdDeliveryCounter:
    def __init__(self, db: Database, clocks: ClockSource) -> None:
        self._db = db
        self._clocks = clocks

    async def count(self, tenant_id: uuid.UUID, ranges: Sequence[SlotRange]) -> AdDeliveryCounts:
        check_ranges(ranges)
        clock = await self._clocks.clock(tenant_id)
        zone_name = clock.time_zone
        zone = time_zone(zone_name)
        if zone is None:
            raise InvalidArgument.field("time_zone", f"the tenant's zone {zone_name!r} is unknown")
        cube = clock.cube_zone(zone_name) or "UTC"
        now = datetime.now(UTC)
        # Per range: whole local days [first_full, last_full) from the rollup, and the
        # partial days at its ends as exact instants.
        full: dict[int, tuple[date, date]] = {}
        partial: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        for i, r in enumerate(ranges):
            end = min(r.end, now)
            if end <= r.start:
                continue
            first_day = local_date(r.start, zone)
            first_full = (
                first_day if day_start(first_day, zone) == r.start else first_day + timedelta(1)
            )
            last_full = local_date(end, zone)
            if first_full >= last_full:
                partial[i].append((r.start, end))
                continue
            full[i] = (first_full, last_full)
            if r.start < day_start(first_full, zone):
                partial[i].append((r.start, day_start(first_full, zone)))
            if day_start(last_full, zone) < end:
                partial[i].append((day_start(last_full, zone), end))
        # Groups by number: the ranges of one group key share one, a range without a
        # group key has its own.
        numbers: dict[str, int] = {}
        keys = [
            numbers.setdefault(r.group_key, len(numbers)) if r.group_key else -1 - i
            for i, r in enumerate(ranges)
        ]
        totals = [0] * len(ranges)
        by_key: dict[int, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
        starts: dict[date, datetime] = {}
        async with self._db.tenant_transaction(tenant_id) as conn:
            if full:
                for row in await _rollup_days(conn, cube, ranges, full, keys):
                    if row["i"] is not None:
                        totals[row["i"]] += row["n"]
                        continue
                    day = row["day"]
                    start = starts.get(day)
                    if start is None:
                        start = starts[day] = day_start(day, zone)
                    by_key[row["g"]][start] += row["n"]
            spans = {span for spans in partial.values() for span in spans}
            for span in sorted(spans):
                slots = [ranges[i].ad_slot_id for i, s in partial.items() if span in s]
                counted = await _exact(conn, span, slots)
                # A partial span lies within one local day.
                day_of_span = day_start(local_date(span[0], zone), zone)
                for i, s in partial.items():
                    if span in s:
                        n = counted.get(ranges[i].ad_slot_id, 0)
                        totals[i] += n
                        by_key[keys[i]][day_of_span] += n

        def days(key: int) -> list[tuple[datetime, int]]:
            return sorted((d, n) for d, n in by_key.get(key, {}).items() if n)

        groups = sorted(numbers)
        return AdDeliveryCounts(
            ranges=[
                SlotDeliveries(range=r, total=totals[i], days=[] if r.group_key else days(keys[i]))
                for i, r in enumerate(ranges)
            ],
            groups=[
                GroupDeliveries(
                    group_key=g,
                    total=sum(t for t, r in zip(totals, ranges, strict=True) if r.group_key == g),
                    days=days(numbers[g]),
                )
                for g in groups
            ],
            time_zone=zone_name,
            complete_until=now,
        )


async def _rollup_days(
    conn: Conn,
    cube: str,
    ranges: Sequence[SlotRange],
    full: dict[int, tuple[date, date]],
    keys: Sequence[int],
) -> list[asyncpg.Record]:
    """From the rollup, in one pass: each range's total (rows with i), and each group's
    deliveries per day (rows with g and day)."""
    indexes = sorted(full)
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT q.i, q.g, r.day, sum(r.ads_delivered)::int8 AS n
        FROM unnest($2::int[], $3::uuid[], $4::date[], $5::date[], $6::int[])
            AS q(i, slot, first, last, g)
        JOIN rollup_daily_ad_slot r
          ON r.tenant_id = app_tenant_id() AND r.zone = $1 AND r.ad_slot_id = q.slot
         AND r.day >= q.first AND r.day < q.last
        GROUP BY GROUPING SETS ((q.i), (q.g, r.day))
        """,
        cube,
        indexes,
        [ranges[i].ad_slot_id for i in indexes],
        [full[i][0] for i in indexes],
        [full[i][1] for i in indexes],
        [keys[i] for i in indexes],
    )
    return rows


async def _exact(
    conn: Conn, span: tuple[datetime, datetime], slots: list[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Deliveries per slot within one partial day."""
    rows = await conn.fetch(
        """
        SELECT ad_slot_id, count(*) AS n
        FROM ad_deliveries
        WHERE tenant_id = app_tenant_id() AND delivered_time >= $1 AND delivered_time < $2
          AND ad_slot_id = ANY($3::uuid[])
        GROUP BY 1
        """,
        span[0],
        span[1],
        slots,
    )
    return {row["ad_slot_id"]: row["n"] for row in rows}
