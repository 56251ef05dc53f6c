"""What each analytics RPC requires of its caller."""

from __future__ import annotations

from services.shared.auth import MethodRule, Permission

SERVICE = "podmesh.analytics.v1.AnalyticsService"

_BY_METHOD: dict[str, MethodRule] = {
    "StreamListenerEvents": Permission.INGEST,
    "IngestListenerEvents": Permission.INGEST,
    "QueryMetrics": Permission.ANALYTICS_READ,
    "ExportMetrics": Permission.ANALYTICS_READ,
    "WatchMetrics": Permission.ANALYTICS_READ,
    "ListTopEpisodes": Permission.ANALYTICS_READ,
    "GetEpisodePerformance": Permission.ANALYTICS_READ,
    "DetectAnomalies": Permission.ANALYTICS_READ,
    "GetForecast": Permission.ANALYTICS_READ,
    "RebuildCounts": Permission.ANALYTICS_ADMIN,
    "GetCountRebuild": Permission.ANALYTICS_READ,
    "GetCountingSettings": Permission.ANALYTICS_READ,
    "UpdateCountingSettings": Permission.ANALYTICS_ADMIN,
    # Campaign pacing asks with its caller's credential; whoever may read a
    # campaign's pacing may read the deliveries behind it.
    "CountAdDeliveries": Permission.CAMPAIGN_READ,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}
