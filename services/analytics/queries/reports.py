"""Metrics reports: the query model, its validation and plan, and the assembly of
rollup rows into points, totals, a methodology and CSV. Pure: no gRPC, no SQL.

Enum values (Metric, Dimension, Granularity, CountingWindow) are the proto's numbers,
so the servicer passes them through and unknown numbers are reported here as field
violations like every other mistake in a request.
"""

from __future__ import annotations

import csv
import enum
import io
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from datasketches import hll_sketch, hll_union

from services.analytics.counting.windows import CountingWindow
from services.analytics.peers import TenantClock
from services.analytics.queries.buckets import (
    DAY,
    Buckets,
    Granularity,
    day_start,
    local_date,
    make_buckets,
)
from services.shared.timezones import time_zone
from services.shared.validation import Violations

GUIDELINE = "IAB Tech Lab Podcast Measurement Technical Guidelines v2.2"
PREFIX_GUIDELINE = (
    "Podmesh measurement prefix methodology v1 (OP3-style: redirects after the bot, HEAD, "
    "bytes=0-1 and duplicate filtering, one download per listener, episode and UTC day, "
    "no byte threshold)"
)
# Apache DataSketches HLL precision the ingestion side builds listener sketches with.
SKETCH_LG_K = 12
MAX_RANGE = timedelta(days=400)
MAX_HOURLY_RANGE = timedelta(days=31)
MAX_EPISODE_IDS = 500
MAX_FILTER_VALUES = 100
MAX_FILTER_VALUE_LENGTH = 100
OTHER = "other"
_E = TypeVar("_E", bound=enum.IntEnum)


class Metric(enum.IntEnum):
    DOWNLOADS = 1
    LISTENERS = 2
    ADS_DELIVERED = 3


class MeasurementSource(enum.IntEnum):
    """Where a report's numbers come from; one source per report, never added."""

    BYTES = 1
    PREFIX = 2


SOURCE_TEXT = {
    MeasurementSource.BYTES: "byte-verified (listener requests with bytes served)",
    MeasurementSource.PREFIX: "measurement prefix (redirects, no bytes served)",
}


class Dimension(enum.IntEnum):
    APP = 1
    DEVICE_CLASS = 2
    COUNTRY = 3
    PODCAST = 4
    EPISODE = 5
    AD_SLOT = 6


# Cubes store '' for an unknown value; reports show what the contract names.
UNKNOWN_LABELS = {
    Dimension.APP: "Unknown",
    Dimension.DEVICE_CLASS: "unknown",
    Dimension.COUNTRY: "ZZ",
}
DEVICE_CLASSES = frozenset({"mobile", "desktop", "smart_speaker", "watch", "tv", "car", "unknown"})
DIMENSION_NAMES = {
    Dimension.APP: "app",
    Dimension.DEVICE_CLASS: "device_class",
    Dimension.COUNTRY: "country",
    Dimension.PODCAST: "podcast_id",
    Dimension.EPISODE: "episode_id",
    Dimension.AD_SLOT: "ad_slot_id",
}
METRIC_NAMES = {
    Metric.DOWNLOADS: "downloads",
    Metric.LISTENERS: "listeners",
    Metric.ADS_DELIVERED: "ads_delivered",
}
_FILTERABLE = (Dimension.APP, Dimension.DEVICE_CLASS, Dimension.COUNTRY)
_WINDOW_TEXT = {
    CountingWindow.UTC_DAY: "calendar day in UTC",
    CountingWindow.TENANT_DAY: "calendar day in the tenant's time zone",
    CountingWindow.ROLLING_24H: "rolling 24 hours from a listener's first request",
}


@dataclass(frozen=True)
class Methodology:
    guideline: str
    counting_window: CountingWindow
    counting_time_zone: str
    bucket_time_zone: str
    complete_until: datetime
    url: str
    user_agent_lists: str
    source: MeasurementSource = MeasurementSource.BYTES


def methodology(
    clock: TenantClock,
    bucket_time_zone: str,
    now: datetime,
    url: str,
    user_agent_lists: str,
    source: MeasurementSource = MeasurementSource.BYTES,
) -> Methodology:
    """Numbers are final once every window that could still add to them has closed."""
    if source is MeasurementSource.PREFIX:
        # Prefix downloads are one per UTC day, whatever the tenant counts by.
        clock = TenantClock(clock.time_zone, CountingWindow.UTC_DAY)
    if clock.counting_window is CountingWindow.ROLLING_24H:
        complete_until = now - DAY
    else:
        zone = time_zone(clock.day_zone) or time_zone("UTC")
        assert zone is not None
        complete_until = day_start(local_date(now, zone), zone)
    return Methodology(
        counting_window=clock.counting_window,
        counting_time_zone=clock.counting_time_zone,
        bucket_time_zone=bucket_time_zone,
        complete_until=complete_until,
        url=url,
        user_agent_lists=user_agent_lists,
        source=source,
        guideline=PREFIX_GUIDELINE if source is MeasurementSource.PREFIX else GUIDELINE,
    )


@dataclass(frozen=True)
class MetricsQuery:
    """A QueryMetrics or ExportMetrics request; enums as their proto numbers."""

    start: datetime | None
    end: datetime | None
    podcast_id: uuid.UUID | None = None
    episode_ids: tuple[uuid.UUID, ...] = ()
    granularity: int = 0
    time_zone: str = ""
    metrics: tuple[int, ...] = ()
    breakdown: int = 0
    breakdown_limit: int = 0
    apps: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()
    country_codes: tuple[str, ...] = ()
    # MeasurementSource's number; 0 is byte-verified.
    source: int = 0


@dataclass(frozen=True)
class BreakdownLimits:
    default: int
    maximum: int


QUERY_LIMITS = BreakdownLimits(default=10, maximum=100)
EXPORT_LIMITS = BreakdownLimits(default=1000, maximum=10_000)


class Source(enum.Enum):
    """The cube a plan reads."""

    DAILY = "rollup_daily"
    DAILY_DIMENSION = "rollup_daily_dimension"
    DAILY_AD_SLOT = "rollup_daily_ad_slot"
    HOURLY = "rollup_hourly"


@dataclass(frozen=True)
class Plan:
    buckets: Buckets
    zone_name: str
    # 'UTC' or 'local' for the daily cubes; None when the plan reads the hourly cube.
    cube_zone: str | None
    source: Source
    metrics: tuple[Metric, ...]
    breakdown: Dimension | None
    breakdown_limit: int
    podcast_id: uuid.UUID | None
    episode_ids: tuple[uuid.UUID, ...]
    # Stored values to keep per dimension ('' stands for unknown); empty: no filter.
    filters: dict[Dimension, tuple[str, ...]] = field(default_factory=dict)
    # The dimension whose rows a DAILY_DIMENSION plan reads.
    row_dimension: Dimension | None = None
    measurement: MeasurementSource = MeasurementSource.BYTES


def _enum_value(kind: type[_E], value: int, field_name: str, violations: Violations) -> _E | None:
    try:
        return kind(value)
    except ValueError:
        violations.add(field_name, f"{value} is not a known value")
        return None


def _stored_filter(dimension: Dimension, values: Sequence[str], v: Violations) -> tuple[str, ...]:
    name = {
        Dimension.APP: "apps",
        Dimension.DEVICE_CLASS: "device_classes",
        Dimension.COUNTRY: "country_codes",
    }[dimension]
    if len(values) > MAX_FILTER_VALUES:
        v.add(name, f"at most {MAX_FILTER_VALUES} values")
        return ()
    stored: set[str] = set()
    for i, raw in enumerate(values):
        value = raw.strip()
        if dimension is Dimension.COUNTRY:
            value = value.upper()
            ok = len(value) == 2 and value.isascii() and value.isalpha()
            v.check(ok, f"{name}[{i}]", "must be an ISO 3166-1 alpha-2 code or ZZ")
        elif dimension is Dimension.DEVICE_CLASS:
            v.check(
                value in DEVICE_CLASSES, f"{name}[{i}]", f"must be one of {sorted(DEVICE_CLASSES)}"
            )
        else:
            ok = 0 < len(value) <= MAX_FILTER_VALUE_LENGTH
            v.check(ok, f"{name}[{i}]", f"must be 1 to {MAX_FILTER_VALUE_LENGTH} characters")
        stored.add(value)
        if value == UNKNOWN_LABELS[dimension]:
            stored.add("")
    return tuple(sorted(stored))


def plan_query(query: MetricsQuery, clock: TenantClock, limits: BreakdownLimits) -> Plan:
    """Validates a query against the contract and picks the cube that answers it."""
    v = Violations()
    v.check(query.start is not None, "start_time", "is required")
    v.check(query.end is not None, "end_time", "is required")
    granularity = _enum_value(Granularity, query.granularity or Granularity.DAY, "granularity", v)
    breakdown = _enum_value(Dimension, query.breakdown, "breakdown", v) if query.breakdown else None
    measurement = _enum_value(
        MeasurementSource, query.source or MeasurementSource.BYTES, "source", v
    )
    metrics: list[Metric] = []
    for i, number in enumerate(query.metrics or (Metric.DOWNLOADS,)):
        metric = _enum_value(Metric, number, f"metrics[{i}]", v)
        if metric is not None and metric not in metrics:
            metrics.append(metric)
    limit = query.breakdown_limit or limits.default
    v.check(
        0 < limit <= limits.maximum,
        "breakdown_limit",
        f"must be 1 to {limits.maximum} (default {limits.default})",
    )
    v.check(
        len(query.episode_ids) <= MAX_EPISODE_IDS,
        "episode_ids",
        f"at most {MAX_EPISODE_IDS} episodes",
    )
    zone_name = query.time_zone.strip() or clock.time_zone
    zone = time_zone(zone_name)
    v.check(zone is not None, "time_zone", f"{zone_name!r} is not an IANA time zone")
    filters = {
        dimension: _stored_filter(dimension, values, v)
        for dimension, values in (
            (Dimension.APP, query.apps),
            (Dimension.DEVICE_CLASS, query.device_classes),
            (Dimension.COUNTRY, query.country_codes),
        )
        if values
    }
    if query.start is not None and query.end is not None:
        if query.end <= query.start:
            v.add("end_time", "must be after start_time")
        elif query.end - query.start > MAX_RANGE:
            v.add("end_time", "must be at most 400 days after start_time")
        elif granularity is Granularity.HOUR and query.end - query.start > MAX_HOURLY_RANGE:
            v.add("end_time", "must be at most 31 days after start_time for hourly buckets")
    v.raise_if_any()
    assert query.start is not None
    assert query.end is not None
    assert granularity is not None
    assert zone is not None

    assert measurement is not None
    buckets = make_buckets(query.start, query.end, granularity, zone)
    cube_zone = clock.cube_zone(zone_name) if granularity is not Granularity.HOUR else None
    source, row_dimension = _source(cube_zone, breakdown, filters)
    if measurement is MeasurementSource.PREFIX:
        # Prefix downloads have an hourly cube only, for every zone and breakdown.
        cube_zone, source, row_dimension = None, Source.HOURLY, None
        v.check(
            metrics == [Metric.DOWNLOADS],
            "metrics",
            "prefix data has downloads only (a redirect delivers no ads, and listeners are "
            "not estimated for it): ask for METRIC_DOWNLOADS",
        )
        v.check(
            breakdown is not Dimension.AD_SLOT,
            "breakdown",
            "prefix data has no ad deliveries to break down by ad slot",
        )
    if breakdown is Dimension.AD_SLOT:
        v.check(
            metrics == [Metric.ADS_DELIVERED],
            "metrics",
            "an ad slot breakdown reports METRIC_ADS_DELIVERED only",
        )
        v.check(not filters, "breakdown", "an ad slot breakdown takes no app, device or country")
        v.check(
            cube_zone is not None,
            "time_zone",
            "ad slots are kept per day in UTC and in the tenant's time zone only: "
            "use one of those with daily or coarser buckets",
        )
    if Metric.LISTENERS in metrics:
        v.check(
            breakdown in (None, Dimension.PODCAST, Dimension.EPISODE) and not filters,
            "metrics",
            "listeners are kept per episode and day, not per app, device class or country: "
            "drop METRIC_LISTENERS or the app, device and country breakdown and filters",
        )
        v.check(
            cube_zone is not None,
            "time_zone",
            "listeners are kept per day in UTC and in the tenant's time zone only: "
            "use one of those with daily or coarser buckets",
        )
    if source is Source.HOURLY:
        v.check(
            buckets.hour_aligned,
            "time_zone",
            f"{zone_name} is not a whole number of hours from UTC here: use UTC or the "
            "tenant's time zone for these buckets",
        )
    v.raise_if_any()
    return Plan(
        buckets=buckets,
        zone_name=zone_name,
        cube_zone=cube_zone if source is not Source.HOURLY else None,
        source=source,
        metrics=tuple(metrics),
        breakdown=breakdown,
        breakdown_limit=limit,
        podcast_id=query.podcast_id,
        episode_ids=query.episode_ids,
        filters=filters,
        row_dimension=row_dimension,
        measurement=measurement,
    )


def _source(
    cube_zone: str | None,
    breakdown: Dimension | None,
    filters: dict[Dimension, tuple[str, ...]],
) -> tuple[Source, Dimension | None]:
    """Daily cubes hold one breakdown dimension per row: any other mix needs the hourly cube."""
    if cube_zone is None:
        return Source.HOURLY, None
    if breakdown is Dimension.AD_SLOT:
        return Source.DAILY_AD_SLOT, None
    if breakdown in _FILTERABLE:
        if set(filters) <= {breakdown}:
            return Source.DAILY_DIMENSION, breakdown
        return Source.HOURLY, None
    if not filters:
        return Source.DAILY, None
    if len(filters) == 1:
        (only,) = filters
        return Source.DAILY_DIMENSION, only
    return Source.HOURLY, None


class MetricPoint(NamedTuple):
    """A tuple, not a dataclass: a report builds thousands of them per request."""

    bucket_start: datetime
    dimension_value: str
    downloads: int | None = None
    listeners: int | None = None
    ads_delivered: int | None = None


@dataclass(frozen=True)
class Report:
    # By bucket, then by dimension value in the order of totals.
    points: list[MetricPoint]
    totals: list[MetricPoint]
    methodology: Methodology
    bucket_starts: Sequence[datetime]


@dataclass(frozen=True)
class CountRow:
    """Summed rollups of one bucket (0-based) and one stored dimension value."""

    bucket: int
    value: str
    downloads: int
    ads_delivered: int


@dataclass(frozen=True)
class SketchRow:
    """One serialized listener sketch, placed in its bucket and dimension value."""

    bucket: int
    value: str
    sketch: bytes


def _display(breakdown: Dimension | None, value: str) -> str:
    if breakdown is None:
        return ""
    if not value and breakdown in UNKNOWN_LABELS:
        return UNKNOWN_LABELS[breakdown]
    return value


def listeners_estimate(sketches: Iterable[bytes]) -> int:
    """Distinct listeners across sketches; HLL is exact for small sets, ~1.6% error beyond."""
    union = hll_union(SKETCH_LG_K)
    empty = True
    for blob in sketches:
        union.update(hll_sketch.deserialize(blob))
        empty = False
    return 0 if empty else round(union.get_estimate())


def assemble(
    plan: Plan, counts: Iterable[CountRow], sketches: Iterable[SketchRow], method: Methodology
) -> Report:
    """Points for every bucket and kept value (zeros where no row), totals, ranking, 'other'."""
    rows = [(row.bucket, _display(plan.breakdown, row.value), row) for row in counts]
    value_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _, value, row in rows:
        summed = value_counts[value]
        summed[0] += row.downloads
        summed[1] += row.ads_delivered
    placed = [(s.bucket, _display(plan.breakdown, s.value), s.sketch) for s in sketches]
    value_sketches: dict[str, list[bytes]] = defaultdict(list)
    for _, value, blob in placed:
        value_sketches[value].append(blob)
    wants_listeners = Metric.LISTENERS in plan.metrics

    values = {""} if plan.breakdown is None else set(value_counts) | set(value_sketches)
    listener_totals = (
        {value: listeners_estimate(value_sketches.get(value, ())) for value in values}
        if wants_listeners
        else {}
    )
    first = plan.metrics[0]

    def rank(value: str) -> int:
        if first is Metric.LISTENERS:
            return listener_totals[value]
        return value_counts[value][0 if first is Metric.DOWNLOADS else 1]

    ordered = sorted(values, key=lambda value: (-rank(value), value))
    labels = ordered[: plan.breakdown_limit]
    group_of = {value: index for index, value in enumerate(labels)}
    if len(ordered) > len(labels):
        group_of.update((value, len(labels)) for value in ordered[len(labels) :])
        labels.append(OTHER)

    size = len(plan.buckets.starts)
    downloads = [[0] * size for _ in labels]
    ads = [[0] * size for _ in labels]
    for bucket, value, row in rows:
        group = group_of[value]
        downloads[group][bucket] += row.downloads
        ads[group][bucket] += row.ads_delivered
    cell_sketches: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    group_sketches: dict[int, list[bytes]] = defaultdict(list)
    for bucket, value, blob in placed:
        cell_sketches[(group_of[value], bucket)].append(blob)
        group_sketches[group_of[value]].append(blob)

    want_downloads = Metric.DOWNLOADS in plan.metrics
    want_ads = Metric.ADS_DELIVERED in plan.metrics
    points = [
        MetricPoint(
            start,
            label,
            downloads[group][bucket] if want_downloads else None,
            listeners_estimate(cell_sketches.get((group, bucket), ())) if wants_listeners else None,
            ads[group][bucket] if want_ads else None,
        )
        for bucket, start in enumerate(plan.buckets.starts)
        for group, label in enumerate(labels)
    ]
    totals = []
    for group, label in enumerate(labels):
        listeners = None
        if wants_listeners:
            listeners = (
                listener_totals[label]
                if label in listener_totals and group_of.get(label) == group
                else listeners_estimate(group_sketches.get(group, ()))
            )
        totals.append(
            MetricPoint(
                plan.buckets.start,
                label,
                sum(downloads[group]) if want_downloads else None,
                listeners,
                sum(ads[group]) if want_ads else None,
            )
        )
    return Report(points, totals, method, plan.buckets.starts)


def render_csv(report: Report, plan: Plan) -> str:
    """One row per bucket and dimension value, the methodology in leading '#' lines."""
    m = report.methodology
    zone = plan.buckets.zone
    lines = [
        "# Podmesh metrics export",
        f"# guideline: {m.guideline}",
        f"# counting window: {_WINDOW_TEXT[m.counting_window]}",
        f"# counting time zone: {m.counting_time_zone or 'none (rolling window)'}",
        f"# bucket time zone: {m.bucket_time_zone}",
        f"# granularity: {plan.buckets.granularity.name.lower()}",
        f"# range: {plan.buckets.start.astimezone(zone).isoformat()} to "
        f"{plan.buckets.end.astimezone(zone).isoformat()}",
        f"# complete until: {m.complete_until.astimezone(UTC).isoformat()}",
        f"# methodology: {m.url}",
        f"# user agent lists: {m.user_agent_lists}",
        f"# source: {SOURCE_TEXT[m.source]}",
    ]
    out = io.StringIO()
    out.write("\n".join(lines) + "\n")
    writer = csv.writer(out, lineterminator="\n")
    header = ["bucket_start_time"]
    if plan.breakdown is not None:
        header.append(DIMENSION_NAMES[plan.breakdown])
    header.extend(METRIC_NAMES[metric] for metric in plan.metrics)
    writer.writerow(header)
    for p in report.points:
        row: list[object] = [p.bucket_start.astimezone(zone).isoformat()]
        if plan.breakdown is not None:
            row.append(p.dimension_value)
        by_metric = {
            Metric.DOWNLOADS: p.downloads,
            Metric.LISTENERS: p.listeners,
            Metric.ADS_DELIVERED: p.ads_delivered,
        }
        row.extend(by_metric[metric] for metric in plan.metrics)
        writer.writerow(row)
    return out.getvalue()
