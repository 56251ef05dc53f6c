"""Maps AnalyticsService protobuf messages to the analytics collaborators and back;
nothing else. Each RPC belongs to one collaborator: MetricsReader (reports, insights;
QueryMetrics answers go through the ReportCache), LiveWatcher (WatchMetrics),
CountingSettingsStore (counting filters), Ingestor (ingestion, which speaks the
ingestion messages itself), CountRebuilder (rebuilds), AdDeliveryCounter (campaign
pacing), PodcastHouseholds (attribution's lift) and IngestUsageReader (billing)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc

from services.analytics.counting_settings import (
    CountingSettingsPatch,
    CountingSettingsStore,
    StoredCountingSettings,
)
from services.analytics.ingest.ingestor import Ingestor
from services.analytics.ingest.rebuild import CountRebuilder
from services.analytics.live.watch import LiveCounters, LiveWatcher
from services.analytics.queries.ad_deliveries import AdDeliveryCounter, SlotRange
from services.analytics.queries.funnel_report import funnel_to_pb
from services.analytics.queries.households import HouseholdsQuery, PodcastHouseholds
from services.analytics.queries.ingest_usage import IngestUsageReader, month_start
from services.analytics.queries.insights import AnomalyDirection
from services.analytics.queries.metrics import MetricsReader
from services.analytics.queries.report_cache import ReportCache
from services.analytics.queries.reports import (
    MeasurementSource,
    Methodology,
    MetricPoint,
    MetricsQuery,
    Report,
)
from services.shared.context import current_tenant_id
from services.shared.errors import InvalidArgument
from services.shared.peers import credentials
from services.shared.protobuf import instant
from services.shared.validation import parse_uuid

SOURCE_TO_PB = {
    MeasurementSource.BYTES: pb.MEASUREMENT_SOURCE_BYTES,
    MeasurementSource.PREFIX: pb.MEASUREMENT_SOURCE_PREFIX,
}
DIRECTION_TO_PB = {
    AnomalyDirection.SPIKE: pb.ANOMALY_DIRECTION_SPIKE,
    AnomalyDirection.DROP: pb.ANOMALY_DIRECTION_DROP,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def optional_uuid(value: str, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field) if value else None


def metrics_query(request: pb.QueryMetricsRequest | pb.ExportMetricsRequest) -> MetricsQuery:
    return MetricsQuery(
        start=instant(request, "start_time"),
        end=instant(request, "end_time"),
        podcast_id=optional_uuid(request.podcast_id, "podcast_id"),
        episode_ids=tuple(
            parse_uuid(e, f"episode_ids[{i}]") for i, e in enumerate(request.episode_ids)
        ),
        granularity=request.granularity,
        time_zone=request.time_zone,
        metrics=tuple(request.metrics),
        breakdown=request.breakdown,
        breakdown_limit=request.breakdown_limit,
        apps=tuple(request.apps),
        device_classes=tuple(request.device_classes),
        country_codes=tuple(request.country_codes),
        source=request.source,
    )


def methodology_to_pb(m: Methodology) -> pb.Methodology:
    return pb.Methodology(
        guideline=m.guideline,
        counting_window=f"COUNTING_WINDOW_{m.counting_window.name}",
        counting_time_zone=m.counting_time_zone,
        bucket_time_zone=m.bucket_time_zone,
        complete_until_time=timestamp(m.complete_until),
        methodology_url=m.url,
        user_agent_lists=m.user_agent_lists,
        source=SOURCE_TO_PB[m.source],
    )


def add_points(container: Any, points: list[MetricPoint]) -> None:
    """Appends in place: a report has thousands of points, and building each message
    separately and copying it in costs twice as much."""
    seconds: dict[datetime, int] = {}
    for p in points:
        second = seconds.get(p.bucket_start)
        if second is None:
            second = seconds[p.bucket_start] = int(p.bucket_start.timestamp())
        point = container.add(dimension_value=p.dimension_value)
        # Bucket starts are whole hours: no nanoseconds.
        point.bucket_start_time.seconds = second
        if p.downloads is not None:
            point.downloads = p.downloads
        if p.listeners is not None:
            point.listeners = p.listeners
        if p.ads_delivered is not None:
            point.ads_delivered = p.ads_delivered


def add_series(response: pb.QueryMetricsResponse, report: Report) -> None:
    """The report's points as one series per dimension value (the order of totals)."""
    for start in report.bucket_starts:
        response.bucket_start_times.add(seconds=int(start.timestamp()))
    width = len(report.totals)
    for index, total in enumerate(report.totals):
        column = report.points[index::width]
        series = response.series.add(dimension_value=total.dimension_value)
        if total.downloads is not None:
            series.downloads.extend([p.downloads or 0 for p in column])
        if total.listeners is not None:
            series.listeners.extend([p.listeners or 0 for p in column])
        if total.ads_delivered is not None:
            series.ads_delivered.extend([p.ads_delivered or 0 for p in column])


def counters_to_pb(c: LiveCounters) -> pb.LiveCounters:
    return pb.LiveCounters(
        update_time=timestamp(c.update_time),
        day_start_time=timestamp(c.day_start),
        downloads_today=c.downloads_today,
        listeners_today=c.listeners_today,
        ads_delivered_today=c.ads_delivered_today,
        requests_last_minute=c.requests_last_minute,
        degraded=c.degraded,
    )


def counting_settings_to_pb(s: StoredCountingSettings) -> pb.CountingSettings:
    return pb.CountingSettings(
        excluded_ip_ranges=list(s.excluded_ip_ranges),
        excluded_user_agents=list(s.excluded_user_agents),
        update_time=timestamp(s.update_time),
    )


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(
        self,
        metrics: MetricsReader,
        watcher: LiveWatcher,
        counting_settings: CountingSettingsStore,
        ingestor: Ingestor,
        rebuilds: CountRebuilder,
        reports: ReportCache[pb.QueryMetricsResponse],
        ad_deliveries: AdDeliveryCounter,
        ingest_usage: IngestUsageReader,
        households: PodcastHouseholds,
    ) -> None:
        self._ad_deliveries = ad_deliveries
        self._households = households
        self._ingest_usage = ingest_usage
        self._metrics = metrics
        self._reports = reports
        self._watcher = watcher
        self._counting_settings = counting_settings
        self._ingestor = ingestor
        self._rebuilds = rebuilds

    # Ingestion

    def StreamListenerEvents(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.StreamListenerEventsResponse]:
        return self._ingestor.stream(request_iterator, credentials(context))

    async def IngestListenerEvents(
        self, request: pb.IngestListenerEventsRequest, context: Any
    ) -> pb.IngestListenerEventsResponse:
        return await self._ingestor.ingest(request, credentials(context))

    async def RebuildCounts(
        self, request: pb.RebuildCountsRequest, context: Any
    ) -> pb.RebuildCountsResponse:
        return await self._rebuilds.start(request, credentials(context))

    async def GetCountRebuild(
        self, request: pb.GetCountRebuildRequest, context: Any
    ) -> pb.GetCountRebuildResponse:
        return await self._rebuilds.get(request)

    # Reports

    async def QueryMetrics(
        self, request: pb.QueryMetricsRequest, context: Any
    ) -> pb.QueryMetricsResponse:
        tenant_id = current_tenant_id()
        query = metrics_query(request)
        view = request.view
        if view not in pb.MetricsView.values():
            raise InvalidArgument.field("view", f"unknown view {view}")
        # The tenant's clock is part of the question: it sets the default time zone.
        clock = await self._metrics.clock(tenant_id)
        key = (clock, request.SerializeToString(deterministic=True))

        async def compute() -> pb.QueryMetricsResponse:
            report, _ = await self._metrics.query(tenant_id, query)
            response = pb.QueryMetricsResponse(methodology=methodology_to_pb(report.methodology))
            if view == pb.METRICS_VIEW_SERIES:
                add_series(response, report)
            else:
                add_points(response.points, report.points)
            add_points(response.totals, report.totals)
            return response

        return await self._reports.answer(tenant_id, key, compute)

    async def ExportMetrics(
        self, request: pb.ExportMetricsRequest, context: Any
    ) -> pb.ExportMetricsResponse:
        text = await self._metrics.export(current_tenant_id(), metrics_query(request))
        return pb.ExportMetricsResponse(
            body=httpbody_pb2.HttpBody(
                content_type="text/csv; charset=utf-8", data=text.encode("utf-8")
            )
        )

    async def WatchMetrics(
        self, request: pb.WatchMetricsRequest, context: Any
    ) -> AsyncIterator[pb.WatchMetricsResponse]:
        updates = self._watcher.watch(
            current_tenant_id(),
            optional_uuid(request.podcast_id, "podcast_id"),
            optional_uuid(request.episode_id, "episode_id"),
        )
        async for counters, heartbeat in updates:
            yield pb.WatchMetricsResponse(counters=counters_to_pb(counters), heartbeat=heartbeat)

    async def ListTopEpisodes(
        self, request: pb.ListTopEpisodesRequest, context: Any
    ) -> pb.ListTopEpisodesResponse:
        episodes, token, method = await self._metrics.top_episodes(
            current_tenant_id(),
            optional_uuid(request.podcast_id, "podcast_id"),
            instant(request, "start_time"),
            instant(request, "end_time"),
            request.ranking_metric,
            request.page_size,
            request.page_token,
        )
        return pb.ListTopEpisodesResponse(
            top_episodes=[
                pb.TopEpisode(
                    rank=e.rank,
                    episode_id=str(e.episode_id),
                    podcast_id=str(e.podcast_id),
                    downloads=e.downloads,
                    listeners=e.listeners,
                )
                for e in episodes
            ],
            next_page_token=token,
            methodology=methodology_to_pb(method),
        )

    async def GetEpisodePerformance(
        self, request: pb.GetEpisodePerformanceRequest, context: Any
    ) -> pb.GetEpisodePerformanceResponse:
        performance, method = await self._metrics.episode_performance(
            current_tenant_id(),
            credentials(context),
            parse_uuid(request.episode_id, "episode_id"),
            list(request.days),
        )
        return pb.GetEpisodePerformanceResponse(
            episode_performance=pb.EpisodePerformance(
                episode_id=str(performance.episode_id),
                podcast_id=str(performance.podcast_id),
                release_time=timestamp(performance.release_time),
                windows=[
                    pb.ReleaseWindow(
                        days=w.days,
                        downloads=w.downloads,
                        complete=w.complete,
                        podcast_median_downloads=w.podcast_median_downloads,
                    )
                    for w in performance.windows
                ],
                total_downloads=performance.total_downloads,
            ),
            methodology=methodology_to_pb(method),
        )

    # Insights

    async def DetectAnomalies(
        self, request: pb.DetectAnomaliesRequest, context: Any
    ) -> pb.DetectAnomaliesResponse:
        days, method = await self._metrics.anomalies(
            current_tenant_id(),
            (
                optional_uuid(request.podcast_id, "podcast_id"),
                optional_uuid(request.episode_id, "episode_id"),
            ),
            instant(request, "start_time"),
            instant(request, "end_time"),
            request.threshold,
            request.include_normal_days,
        )
        return pb.DetectAnomaliesResponse(
            days=[
                pb.DayCheck(
                    day_start_time=timestamp(start),
                    actual_downloads=c.actual_downloads,
                    expected_downloads=c.expected_downloads,
                    expected_low=c.expected_low,
                    expected_high=c.expected_high,
                    deviation_score=c.deviation_score,
                    anomalous=c.anomalous,
                    direction=(
                        DIRECTION_TO_PB[c.direction]
                        if c.direction
                        else pb.ANOMALY_DIRECTION_UNSPECIFIED
                    ),
                )
                for start, c in days
            ],
            methodology=methodology_to_pb(method),
        )

    async def GetForecast(
        self, request: pb.GetForecastRequest, context: Any
    ) -> pb.GetForecastResponse:
        result, starts, method = await self._metrics.forecast(
            current_tenant_id(),
            (
                optional_uuid(request.podcast_id, "podcast_id"),
                optional_uuid(request.episode_id, "episode_id"),
            ),
            request.horizon_days,
            request.confidence_level,
        )
        return pb.GetForecastResponse(
            points=[
                pb.ForecastPoint(
                    day_start_time=timestamp(start),
                    predicted_downloads=p.predicted_downloads,
                    lower_bound=p.lower_bound,
                    upper_bound=p.upper_bound,
                )
                for start, p in zip(starts, result.points, strict=True)
            ],
            confidence_level=result.confidence_level,
            history_days=result.history_days,
            methodology=methodology_to_pb(method),
        )

    async def GetCountingFunnel(
        self, request: pb.GetCountingFunnelRequest, context: Any
    ) -> pb.GetCountingFunnelResponse:
        period, totals, method = await self._metrics.counting_funnel(
            current_tenant_id(),
            (
                optional_uuid(request.podcast_id, "podcast_id"),
                optional_uuid(request.episode_id, "episode_id"),
            ),
            instant(request, "start_time"),
            instant(request, "end_time"),
            request.time_zone,
            request.source,
        )
        return pb.GetCountingFunnelResponse(
            counting_funnel=funnel_to_pb(period, totals), methodology=methodology_to_pb(method)
        )

    # Counting settings

    async def GetCountingSettings(
        self, request: pb.GetCountingSettingsRequest, context: Any
    ) -> pb.GetCountingSettingsResponse:
        stored = await self._counting_settings.get(current_tenant_id())
        return pb.GetCountingSettingsResponse(counting_settings=counting_settings_to_pb(stored))

    async def UpdateCountingSettings(
        self, request: pb.UpdateCountingSettingsRequest, context: Any
    ) -> pb.UpdateCountingSettingsResponse:
        settings = request.counting_settings
        stored = await self._counting_settings.update(
            current_tenant_id(),
            CountingSettingsPatch(
                excluded_ip_ranges=tuple(settings.excluded_ip_ranges),
                excluded_user_agents=tuple(settings.excluded_user_agents),
            ),
            list(request.update_mask.paths),
        )
        return pb.UpdateCountingSettingsResponse(counting_settings=counting_settings_to_pb(stored))

    # Campaign delivery

    async def CountAdDeliveries(
        self, request: pb.CountAdDeliveriesRequest, context: Any
    ) -> pb.CountAdDeliveriesResponse:
        ranges = []
        for i, r in enumerate(request.ranges):
            field = f"ranges[{i}]"
            start, end = instant(r, "start_time"), instant(r, "end_time")
            if start is None or end is None:
                raise InvalidArgument.field(field, "start_time and end_time are required")
            ranges.append(
                SlotRange(
                    ad_slot_id=parse_uuid(r.ad_slot_id, f"{field}.ad_slot_id"),
                    episode_id=parse_uuid(r.episode_id, f"{field}.episode_id"),
                    start=start,
                    end=end,
                    group_key=r.group_key,
                )
            )
        counts = await self._ad_deliveries.count(current_tenant_id(), ranges)
        # Ranges share their days: each day's Timestamp is made once.
        stamps: dict[datetime, Timestamp | None] = {}
        for days in [c.days for c in counts.ranges] + [g.days for g in counts.groups]:
            for day, _ in days:
                if day not in stamps:
                    stamps[day] = timestamp(day)
        return pb.CountAdDeliveriesResponse(
            ranges=[
                pb.AdSlotDeliveries(
                    ad_slot_id=str(c.range.ad_slot_id),
                    start_time=timestamp(c.range.start),
                    end_time=timestamp(c.range.end),
                    ads_delivered=c.total,
                    days=[
                        pb.DailyAdDeliveries(day_start_time=stamps[day], ads_delivered=n)
                        for day, n in c.days
                    ],
                )
                for c in counts.ranges
            ],
            groups=[
                pb.AdDeliveryGroup(
                    group_key=g.group_key,
                    ads_delivered=g.total,
                    days=[
                        pb.DailyAdDeliveries(day_start_time=stamps[day], ads_delivered=n)
                        for day, n in g.days
                    ],
                )
                for g in counts.groups
            ],
            time_zone=counts.time_zone,
            complete_until_time=timestamp(counts.complete_until),
        )

    # Attribution

    async def ListPodcastHouseholds(
        self, request: pb.ListPodcastHouseholdsRequest, context: Any
    ) -> AsyncIterator[pb.ListPodcastHouseholdsResponse]:
        start, end = instant(request, "start_time"), instant(request, "end_time")
        if start is None or end is None:
            raise InvalidArgument.field(
                "start_time" if start is None else "end_time",
                "start_time and end_time are required",
            )
        query = HouseholdsQuery(
            podcast_ids=[
                parse_uuid(p, f"podcast_ids[{i}]") for i, p in enumerate(request.podcast_ids)
            ],
            start=start,
            end=end,
        )
        async for chunk in self._households.chunks(current_tenant_id(), query):
            yield pb.ListPodcastHouseholdsResponse(household_ids=chunk)

    # Billing

    async def GetIngestUsage(
        self, request: pb.GetIngestUsageRequest, context: Any
    ) -> pb.GetIngestUsageResponse:
        tenant_id = parse_uuid(request.tenant_id, "tenant_id")
        usage = await self._ingest_usage.usage(tenant_id, month_start(request.year, request.month))
        return pb.GetIngestUsageResponse(
            period_start_time=timestamp(usage.period_start),
            period_end_time=timestamp(usage.period_end),
            accepted_events=usage.accepted_events,
        )
