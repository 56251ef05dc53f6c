"""GetCountingFunnel's arithmetic and messages: which days a period covers, the funnel
read from its rollup (counting_funnel, written by services.analytics.ingest.funnel_rollup),
and the protobuf forms shared with the ingestion acknowledgements."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg
from podmesh.analytics.v1 import analytics_pb2 as pb

from services.analytics.counting import FilterReason
from services.analytics.counting.funnel import Outcome
from services.analytics.peers import TenantClock
from services.analytics.queries.buckets import Granularity, make_buckets
from services.analytics.queries.reports import MAX_RANGE, MeasurementSource
from services.shared.validation import Violations

# In the protobuf enum's order; every counting reason has its value (a reason added to
# the counting core without one fails here, at import).
_REASONS_TO_PB: list[tuple[FilterReason, pb.FilterReason]] = sorted(
    ((reason, getattr(pb, f"FILTER_REASON_{reason.name}")) for reason in FilterReason),
    key=lambda pair: pair[1],
)


def filter_reason_counts(filtered: Mapping[FilterReason, int]) -> list[pb.FilterReasonCount]:
    """Reasons that occurred, in FilterReason order."""
    return [
        pb.FilterReasonCount(reason=number, count=filtered[reason])
        for reason, number in _REASONS_TO_PB
        if filtered.get(reason)
    ]


@dataclass(frozen=True)
class FunnelPeriod:
    """Whole days of one zone: [first_day, end_day), and the instants they span."""

    zone_name: str
    cube_zone: str
    first_day: date
    end_day: date
    start: datetime
    end: datetime


def funnel_period(
    clock: TenantClock,
    start: datetime | None,
    end: datetime | None,
    zone_name: str,
    scope: tuple[uuid.UUID | None, uuid.UUID | None],
    source: int = 0,
) -> tuple[FunnelPeriod, MeasurementSource]:
    """The days covering [start, end) in the tenant's zone or UTC (the zones of the
    funnel's daily rows, as QueryMetrics' daily buckets), and the measurement asked for."""
    v = Violations()
    try:
        measurement = MeasurementSource(source or MeasurementSource.BYTES)
    except ValueError:
        v.add("source", f"{source} is not a known value")
        measurement = MeasurementSource.BYTES
    v.check(start is not None, "start_time", "is required")
    v.check(end is not None, "end_time", "is required")
    if start is not None and end is not None:
        if end <= start:
            v.add("end_time", "must be after start_time")
        elif end - start > MAX_RANGE:
            v.add("end_time", "must be at most 400 days after start_time")
    v.check(
        scope[0] is None or scope[1] is None,
        "episode_id",
        "give podcast_id or episode_id, not both",
    )
    name = zone_name.strip() or clock.time_zone
    # Only zones with daily rows: the tenant's (checked when it was set) and UTC.
    cube = clock.cube_zone(name)
    v.check(
        cube is not None, "time_zone", f"must be the tenant's time zone ({clock.time_zone}) or UTC"
    )
    v.raise_if_any()
    assert start is not None
    assert end is not None
    assert cube is not None
    buckets = make_buckets(start, end, Granularity.TOTAL, ZoneInfo(name))
    assert buckets.end_date is not None
    if measurement is MeasurementSource.PREFIX:
        # The prefix funnel is kept per hour.
        v.check(
            buckets.hour_aligned,
            "time_zone",
            f"{name} is not a whole number of hours from UTC here: use UTC for the prefix funnel",
        )
        v.raise_if_any()
    period = FunnelPeriod(
        name,
        cube,
        buckets.start_dates[0],
        buckets.end_date,
        buckets.starts[0],
        buckets.end,
    )
    return period, measurement


def funnel_to_pb(period: FunnelPeriod, totals: FunnelTotals) -> pb.CountingFunnel:
    filtered = totals[Outcome.FILTERED]
    late = totals[Outcome.LATE]
    below = totals[Outcome.BELOW_THRESHOLD]
    repeats = totals[Outcome.WINDOW_REPEAT]
    downloads = totals[Outcome.DOWNLOAD]
    countable = below + repeats + downloads
    stored = filtered + late + countable + totals.unmatched
    duplicates = totals[Outcome.DUPLICATE]
    funnel = pb.CountingFunnel(
        time_zone=period.zone_name,
        received_count=duplicates + stored,
        duplicate_count=duplicates,
        stored_count=stored,
        filtered_count=filtered,
        filtered_counts=filter_reason_counts(totals.filtered),
        late_count=late,
        countable_count=countable,
        below_threshold_count=below,
        window_repeat_count=repeats,
        download_count=downloads,
        unmatched_count=totals.unmatched,
    )
    funnel.start_time.FromDatetime(period.start)
    funnel.end_time.FromDatetime(period.end)
    return funnel


@dataclass(frozen=True)
class FunnelTotals:
    """A period's funnel: requests per outcome, and filtered ones per reason."""

    outcomes: Mapping[Outcome, int]
    filtered: Mapping[FilterReason, int]
    # Prefix requests whose media URL matches no episode of the tenant.
    unmatched: int = 0

    def __getitem__(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome, 0)


async def read_funnel(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    zone: str,
    first_day: date,
    end_day: date,
    podcast_id: uuid.UUID | None,
    episode_id: uuid.UUID | None,
) -> FunnelTotals:
    """The funnel of the days [first_day, end_day) of a zone's rows."""
    rows = await conn.fetch(
        """
        SELECT outcome, reason, sum(requests)::int8 AS requests FROM counting_funnel
        WHERE tenant_id = $1 AND zone = $2 AND day >= $3 AND day < $4
            AND ($5::uuid IS NULL OR podcast_id = $5)
            AND ($6::uuid IS NULL OR episode_id = $6)
        GROUP BY outcome, reason
        """,
        tenant_id,
        zone,
        first_day,
        end_day,
        podcast_id,
        episode_id,
    )
    outcomes: dict[Outcome, int] = defaultdict(int)
    filtered: dict[FilterReason, int] = {}
    for row in rows:
        outcome = Outcome(row["outcome"])
        outcomes[outcome] += row["requests"]
        if outcome is Outcome.FILTERED:
            filtered[FilterReason(row["reason"])] = row["requests"]
    return FunnelTotals(dict(outcomes), filtered)


async def read_prefix_funnel(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    podcast_id: uuid.UUID | None,
    episode_id: uuid.UUID | None,
) -> FunnelTotals:
    """The prefix funnel of the hours in [start, end); unmatched requests belong to the
    whole tenant's funnel only."""
    rows = await conn.fetch(
        """
        SELECT outcome, reason, sum(requests)::int8 AS requests FROM prefix_funnel_hourly
        WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
            AND ($4::uuid IS NULL OR podcast_id = $4)
            AND ($5::uuid IS NULL OR episode_id = $5)
        GROUP BY outcome, reason
        """,
        tenant_id,
        start,
        end,
        podcast_id,
        episode_id,
    )
    outcomes: dict[Outcome, int] = defaultdict(int)
    filtered: dict[FilterReason, int] = {}
    unmatched = 0
    for row in rows:
        if row["outcome"] == "unmatched":
            unmatched += row["requests"]
            continue
        outcome = Outcome(row["outcome"])
        outcomes[outcome] += row["requests"]
        if outcome is Outcome.FILTERED:
            filtered[FilterReason(row["reason"])] = row["requests"]
    return FunnelTotals(dict(outcomes), filtered, unmatched)
