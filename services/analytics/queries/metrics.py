"""The analytics read side: metrics series, CSV exports, top episodes, performance since
release, anomalies and forecasts. Each use case reads in one tenant transaction, and
only from the rollup and sketch tables (never from raw requests or counted downloads).
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from services.analytics.peers import CatalogReleases, ClockSource, Metadata, TenantClock
from services.analytics.queries import funnel_report, insights
from services.analytics.queries import repository as repo
from services.analytics.queries.buckets import DAY, day_start, local_date
from services.analytics.queries.reports import (
    EXPORT_LIMITS,
    MAX_RANGE,
    QUERY_LIMITS,
    BreakdownLimits,
    CountRow,
    Dimension,
    MeasurementSource,
    Methodology,
    Metric,
    MetricsQuery,
    Plan,
    Report,
    SketchRow,
    assemble,
    listeners_estimate,
    methodology,
    plan_query,
    render_csv,
)
from services.analytics.queries.repository import ReleaseSpan
from services.shared.db import Database
from services.shared.errors import FailedPrecondition
from services.shared.pagination import PageTokens
from services.shared.timezones import time_zone
from services.shared.validation import Violations, page_size

DEFAULT_RELEASE_DAYS = (1, 7, 30)
MAX_RELEASE_DAYS = 365
MAX_RELEASE_WINDOWS = 10
DEFAULT_ANOMALY_DAYS = 30
MAX_ANOMALY_DAYS = 366
_FAR_FUTURE = date(9999, 12, 31)


@dataclass(frozen=True)
class TopEpisode:
    rank: int
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    downloads: int
    listeners: int


@dataclass(frozen=True)
class ReleaseWindow:
    days: int
    downloads: int
    complete: bool
    podcast_median_downloads: int


@dataclass(frozen=True)
class EpisodePerformance:
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    release_time: datetime
    windows: list[ReleaseWindow]
    total_downloads: int


def release_span(episode_id: uuid.UUID, publish_time: datetime, days: int | None) -> ReleaseSpan:
    """The cube ranges covering [publish hour, + days x 24 h): hours up to the first UTC
    midnight, whole UTC days, then the hours of the last partial day. None: until today."""
    start = publish_time.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    midnight = start.replace(hour=0)
    first_midnight = midnight if midnight == start else midnight + DAY
    if days is None:
        return ReleaseSpan(
            episode_id, start, first_midnight, first_midnight, first_midnight,
            first_midnight.date(), _FAR_FUTURE,
        )  # fmt: skip
    end = start + days * DAY
    last_midnight = end.replace(hour=0)
    return ReleaseSpan(
        episode_id, start, first_midnight, last_midnight, end,
        first_midnight.date(), last_midnight.date(),
    )  # fmt: skip


class MetricsReader:
    def __init__(
        self,
        db: Database,
        clocks: ClockSource,
        catalog: CatalogReleases,
        page_tokens: PageTokens,
        methodology_url: str,
        user_agent_lists: str,
    ) -> None:
        self._db = db
        self._clocks = clocks
        self._catalog = catalog
        self._tokens = page_tokens
        self._url = methodology_url
        self._user_agent_lists = user_agent_lists

    async def clock(self, tenant_id: uuid.UUID) -> TenantClock:
        return await self._clocks.clock(tenant_id)

    def _methodology(
        self,
        clock: TenantClock,
        bucket_zone: str,
        source: MeasurementSource = MeasurementSource.BYTES,
    ) -> Methodology:
        return methodology(
            clock, bucket_zone, datetime.now(UTC), self._url, self._user_agent_lists, source
        )

    async def query(
        self,
        tenant_id: uuid.UUID,
        query: MetricsQuery,
        limits: BreakdownLimits = QUERY_LIMITS,
    ) -> tuple[Report, Plan]:
        clock = await self._clocks.clock(tenant_id)
        plan = plan_query(query, clock, limits)
        counts: list[CountRow] = []
        sketches: list[SketchRow] = []
        async with self._db.tenant_transaction(tenant_id) as conn:
            if plan.metrics != (Metric.LISTENERS,):
                counts = await repo.count_rows(conn, tenant_id, plan)
            if Metric.LISTENERS in plan.metrics:
                assert plan.cube_zone is not None
                assert plan.buckets.end_date is not None
                records = await repo.listener_sketches(
                    conn,
                    tenant_id,
                    plan.cube_zone,
                    plan.buckets.start_dates[0],
                    plan.buckets.end_date,
                    plan.podcast_id,
                    plan.episode_ids,
                )
                sketches = [
                    SketchRow(plan.buckets.index_of_date(r.day), _sketch_value(plan, r), r.sketch)
                    for r in records
                ]
        report = assemble(
            plan, counts, sketches, self._methodology(clock, plan.zone_name, plan.measurement)
        )
        return report, plan

    async def counting_funnel(
        self,
        tenant_id: uuid.UUID,
        scope: tuple[uuid.UUID | None, uuid.UUID | None],
        start: datetime | None,
        end: datetime | None,
        zone_name: str,
        source: int = 0,
    ) -> tuple[funnel_report.FunnelPeriod, funnel_report.FunnelTotals, Methodology]:
        """Where the requests of the days covering [start, end) ended up."""
        clock = await self._clocks.clock(tenant_id)
        period, measurement = funnel_report.funnel_period(
            clock, start, end, zone_name, scope, source
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            if measurement is MeasurementSource.PREFIX:
                totals = await funnel_report.read_prefix_funnel(
                    conn, tenant_id, period.start, period.end, *scope
                )
            else:
                totals = await funnel_report.read_funnel(
                    conn, tenant_id, period.cube_zone, period.first_day, period.end_day, *scope
                )
        return period, totals, self._methodology(clock, period.zone_name, measurement)

    async def export(self, tenant_id: uuid.UUID, query: MetricsQuery) -> str:
        report, plan = await self.query(tenant_id, query, EXPORT_LIMITS)
        return render_csv(report, plan)

    async def top_episodes(
        self,
        tenant_id: uuid.UUID,
        podcast_id: uuid.UUID | None,
        start: datetime | None,
        end: datetime | None,
        ranking: int,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[TopEpisode], str, Methodology]:
        v = Violations()
        _check_range(v, start, end, MAX_RANGE, "400 days")
        v.check(
            ranking in (0, Metric.DOWNLOADS, Metric.LISTENERS),
            "ranking_metric",
            "must be METRIC_DOWNLOADS or METRIC_LISTENERS",
        )
        v.raise_if_any()
        assert start is not None
        assert end is not None
        size = page_size(requested_page_size)
        by_listeners = ranking == Metric.LISTENERS
        clock = await self._clocks.clock(tenant_id)
        zone_name, cube, first_day, end_day = _day_range(clock, start, end)
        fingerprint = {
            "list": "top_episodes",
            "podcast": str(podcast_id),
            "days": [first_day.isoformat(), end_day.isoformat(), cube],
            "by": "listeners" if by_listeners else "downloads",
        }
        cursor = self._tokens.decode(page_token, fingerprint)
        after = (int(cursor["v"]), uuid.UUID(cursor["id"])) if cursor else None
        rank = int(cursor["rank"]) if cursor else 0
        async with self._db.tenant_transaction(tenant_id) as conn:
            if by_listeners:
                records = await repo.listener_sketches(
                    conn, tenant_id, cube, first_day, end_day, podcast_id
                )
                by_episode: dict[uuid.UUID, list[bytes]] = defaultdict(list)
                podcasts: dict[uuid.UUID, uuid.UUID] = {}
                for r in records:
                    by_episode[r.episode_id].append(r.sketch)
                    podcasts[r.episode_id] = r.podcast_id
                ranked = sorted(
                    ((listeners_estimate(s), e) for e, s in by_episode.items()),
                    key=lambda pair: (-pair[0], pair[1]),
                )
                if after is not None:
                    ranked = [p for p in ranked if (-p[0], p[1]) > (-after[0], after[1])]
                page = ranked[: size + 1]
                downloads = await repo.episode_totals(
                    conn, tenant_id, cube, first_day, end_day, [e for _, e in page[:size]]
                )
                rows = [
                    (e, podcasts[e], downloads.get(e, 0), listeners, listeners)
                    for listeners, e in page
                ]
            else:
                totals = await repo.top_episodes(
                    conn, tenant_id, cube, first_day, end_day, podcast_id, after, size + 1
                )
                sketches = await repo.listener_sketches(
                    conn,
                    tenant_id,
                    cube,
                    first_day,
                    end_day,
                    episode_ids=[t.episode_id for t in totals[:size]],
                )
                per_episode: dict[uuid.UUID, list[bytes]] = defaultdict(list)
                for s in sketches:
                    per_episode[s.episode_id].append(s.sketch)
                rows = [
                    (
                        t.episode_id,
                        t.podcast_id,
                        t.downloads,
                        listeners_estimate(per_episode.get(t.episode_id, ())),
                        t.downloads,
                    )
                    for t in totals
                ]
        more = len(rows) > size
        rows = rows[:size]
        episodes = [
            TopEpisode(rank + i + 1, e, p, d, listeners)
            for i, (e, p, d, listeners, _) in enumerate(rows)
        ]
        token = ""
        if more and rows:
            last = rows[-1]
            token = self._tokens.encode(
                {"v": last[4], "id": str(last[0]), "rank": rank + len(rows)}, fingerprint
            )
        return episodes, token, self._methodology(clock, zone_name)

    async def episode_performance(
        self,
        tenant_id: uuid.UUID,
        credentials: Metadata,
        episode_id: uuid.UUID,
        days: Sequence[int],
    ) -> tuple[EpisodePerformance, Methodology]:
        v = Violations()
        windows = tuple(days) or DEFAULT_RELEASE_DAYS
        v.check(
            len(windows) <= MAX_RELEASE_WINDOWS, "days", f"at most {MAX_RELEASE_WINDOWS} windows"
        )
        for i, d in enumerate(windows):
            v.check(1 <= d <= MAX_RELEASE_DAYS, f"days[{i}]", "must be 1 to 365")
        v.raise_if_any()
        clock = await self._clocks.clock(tenant_id)
        method = self._methodology(clock, "UTC")
        release = await self._catalog.episode(episode_id, credentials)
        if release.publish_time is None:
            raise FailedPrecondition(
                f"episode {episode_id} has no publish time in the catalog",
                reason="EPISODE_NOT_PUBLISHED",
            )
        done = method.complete_until
        others = [
            o
            for o in await self._catalog.published_before(
                release.podcast_id, done - min(windows) * DAY, credentials
            )
            if o.episode_id != episode_id and o.publish_time is not None
        ]
        spans = [release_span(episode_id, release.publish_time, d) for d in windows]
        spans.append(release_span(episode_id, release.publish_time, None))
        peers: list[tuple[int, int]] = []
        for index, d in enumerate(windows):
            for other in others:
                assert other.publish_time is not None
                if other.publish_time + d * DAY <= done:
                    peers.append((index, len(spans)))
                    spans.append(release_span(other.episode_id, other.publish_time, d))
        async with self._db.tenant_transaction(tenant_id) as conn:
            downloads = await repo.release_span_downloads(conn, tenant_id, spans)
        peer_downloads: dict[int, list[int]] = defaultdict(list)
        for index, position in peers:
            peer_downloads[index].append(downloads[position])
        performance = EpisodePerformance(
            episode_id=episode_id,
            podcast_id=release.podcast_id,
            release_time=release.publish_time,
            windows=[
                ReleaseWindow(
                    days=d,
                    downloads=downloads[i],
                    complete=release.publish_time + d * DAY <= done,
                    podcast_median_downloads=(
                        round(statistics.median(peer_downloads[i])) if peer_downloads[i] else 0
                    ),
                )
                for i, d in enumerate(windows)
            ],
            total_downloads=downloads[len(windows)],
        )
        return performance, method

    async def _daily_totals(
        self,
        tenant_id: uuid.UUID,
        scope: tuple[uuid.UUID | None, uuid.UUID | None],
        cube: str,
        first_day: date,
        end_day: date,
    ) -> list[tuple[date, int, int]]:
        """Daily downloads of a podcast, an episode or the tenant: what insights fit."""
        podcast_id, episode_id = scope
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await repo.daily_totals(
                conn,
                tenant_id,
                cube,
                first_day,
                end_day,
                podcast_id,
                (episode_id,) if episode_id else (),
            )

    async def anomalies(
        self,
        tenant_id: uuid.UUID,
        scope: tuple[uuid.UUID | None, uuid.UUID | None],
        start: datetime | None,
        end: datetime | None,
        threshold: float,
        include_normal_days: bool,
    ) -> tuple[list[tuple[datetime, insights.DayCheck]], Methodology]:
        """The checked days of the range, oldest first, each with its start instant."""
        v = Violations()
        _check_scope(v, scope)
        if start is not None or end is not None:
            _check_range(v, start, end, timedelta(days=MAX_ANOMALY_DAYS), "366 days")
        v.check(
            threshold == 0 or (math.isfinite(threshold) and threshold > 0),
            "threshold",
            "must be a positive number (default 3.5)",
        )
        v.raise_if_any()
        clock = await self._clocks.clock(tenant_id)
        zone_name, cube, first_day, end_day = _insight_days(clock, start, end)
        rows = await self._daily_totals(
            tenant_id,
            scope,
            cube,
            first_day - timedelta(days=insights.ANOMALY_LOOKBACK_DAYS),
            end_day,
        )
        series = _through(rows, end_day - timedelta(days=1))
        checks = insights.detect_anomalies(
            series,
            threshold=threshold or insights.DEFAULT_THRESHOLD,
            include_normal_days=include_normal_days,
        )
        zone = time_zone(zone_name)
        assert zone is not None
        days = [(day_start(c.day, zone), c) for c in checks if first_day <= c.day < end_day]
        return days, self._methodology(clock, zone_name)

    async def forecast(
        self,
        tenant_id: uuid.UUID,
        scope: tuple[uuid.UUID | None, uuid.UUID | None],
        horizon_days: int,
        confidence_level: float,
    ) -> tuple[insights.Forecast, list[datetime], Methodology]:
        """The forecast from tomorrow on, and the start instant of each forecast day."""
        v = Violations()
        _check_scope(v, scope)
        v.check(
            0 <= horizon_days <= insights.MAX_HORIZON_DAYS,
            "horizon_days",
            f"must be 1 to {insights.MAX_HORIZON_DAYS} (default {insights.DEFAULT_HORIZON_DAYS})",
        )
        v.check(
            confidence_level == 0 or 0 < confidence_level < 1,
            "confidence_level",
            "must be between 0 and 1, e.g. 0.8 (default 0.95)",
        )
        v.raise_if_any()
        clock = await self._clocks.clock(tenant_id)
        zone_name, cube, _, today = _insight_days(clock, None, None)
        rows = await self._daily_totals(
            tenant_id, scope, cube, today - timedelta(days=insights.MAX_FIT_DAYS), today
        )
        try:
            result = insights.forecast(
                _through(rows, today - timedelta(days=1)),
                horizon_days=horizon_days or insights.DEFAULT_HORIZON_DAYS,
                confidence_level=confidence_level or insights.DEFAULT_CONFIDENCE_LEVEL,
                first_day=today + timedelta(days=1),
            )
        except insights.InsufficientHistoryError as error:
            raise FailedPrecondition(str(error), reason="NOT_ENOUGH_HISTORY") from None
        zone = time_zone(zone_name)
        assert zone is not None
        starts = [day_start(p.day, zone) for p in result.points]
        return result, starts, self._methodology(clock, zone_name)


def _sketch_value(plan: Plan, record: repo.SketchRecord) -> str:
    if plan.breakdown is Dimension.PODCAST:
        return str(record.podcast_id)
    if plan.breakdown is Dimension.EPISODE:
        return str(record.episode_id)
    return ""


def _check_range(
    v: Violations, start: datetime | None, end: datetime | None, longest: timedelta, text: str
) -> None:
    v.check(start is not None, "start_time", "is required")
    v.check(end is not None, "end_time", "is required")
    if start is not None and end is not None:
        if end <= start:
            v.add("end_time", "must be after start_time")
        elif end - start > longest:
            v.add("end_time", f"must be at most {text} after start_time")


def _check_scope(v: Violations, scope: tuple[uuid.UUID | None, uuid.UUID | None]) -> None:
    v.check(
        scope[0] is None or scope[1] is None,
        "episode_id",
        "give podcast_id or episode_id, not both",
    )


def _day_range(clock: TenantClock, start: datetime, end: datetime) -> tuple[str, str, date, date]:
    """Whole days covering [start, end): UTC days when both ends are UTC midnights,
    else the tenant's days. Returns (zone name, cube zone, first day, end day)."""
    if start == start.replace(hour=0, minute=0, second=0, microsecond=0) and end == end.replace(
        hour=0, minute=0, second=0, microsecond=0
    ):
        return "UTC", "UTC", start.date(), end.date()
    zone = time_zone(clock.time_zone)
    cube = clock.cube_zone(clock.time_zone)
    assert zone is not None
    assert cube is not None
    last = local_date(end - timedelta(microseconds=1), zone)
    return clock.time_zone, cube, local_date(start, zone), last + timedelta(days=1)


def _insight_days(
    clock: TenantClock, start: datetime | None, end: datetime | None
) -> tuple[str, str, date, date]:
    """Days of the tenant's zone; by default the last 30 complete days."""
    zone = time_zone(clock.time_zone)
    cube = clock.cube_zone(clock.time_zone)
    assert zone is not None
    assert cube is not None
    if start is None or end is None:
        today = local_date(datetime.now(UTC), zone)
        return clock.time_zone, cube, today - timedelta(days=DEFAULT_ANOMALY_DAYS), today
    last = local_date(end - timedelta(microseconds=1), zone)
    return clock.time_zone, cube, local_date(start, zone), last + timedelta(days=1)


def _through(rows: Sequence[tuple[date, int, int]], last_day: date) -> list[tuple[date, int]]:
    """The daily download series, ending on `last_day` even when it had no downloads."""
    series = [(day, downloads) for day, downloads, _ in rows if day <= last_day]
    if series and series[-1][0] < last_day:
        series.append((last_day, 0))
    return series
