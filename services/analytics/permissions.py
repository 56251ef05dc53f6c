"""What each analytics RPC requires of its caller, and of its requests."""

from __future__ import annotations

from services.shared.auth import MethodRule, Permission
from services.shared.batch_stream import MAX_BATCH_BYTES
from services.shared.config import Settings
from services.shared.inputs import KIB, MIB, InputRule, InputRules

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
    "GetCountingFunnel": Permission.ANALYTICS_READ,
    "GetCountingSettings": Permission.ANALYTICS_READ,
    "UpdateCountingSettings": Permission.ANALYTICS_ADMIN,
    # Campaign pacing asks with its caller's credential; whoever may read a
    # campaign's pacing may read the deliveries behind it.
    "CountAdDeliveries": Permission.CAMPAIGN_READ,
    # Attribution asks with its caller's credential for a campaign report's control
    # group; whoever may read attribution reports may read the (hashed) households
    # behind their lift.
    "ListPodcastHouseholds": Permission.ATTRIBUTION_READ,
    # The tenant service's billing asks for any tenant it meters, from its usage
    # reporter, which acts for no user; so only the platform administrator, and a
    # tenant's own credential never reads another's usage.
    "GetIngestUsage": Permission.PLATFORM_ADMIN,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}

# Ingestion refuses batches over 4 MiB itself (BATCH_TOO_LARGE, after the batches of a
# stream before it); the margin keeps that answer for batches just over. Records are
# checked one by one (services.analytics.ingest.records): a record with a NUL is
# rejected alone, so the shared walk leaves them out.
_BATCH = InputRule(max_bytes=MAX_BATCH_BYTES + MIB, unchecked_fields=frozenset({"requests"}))
# 500 episode ids and up to 300 filter values of 100 characters.
_REPORT = InputRule(max_bytes=256 * KIB)
_INPUTS_BY_METHOD: dict[str, InputRule] = {
    "StreamListenerEvents": _BATCH,
    "IngestListenerEvents": _BATCH,
    "QueryMetrics": _REPORT,
    "ExportMetrics": _REPORT,
    # 1,000 IP ranges and 200 user agent substrings of 200 characters.
    "UpdateCountingSettings": InputRule(max_bytes=256 * KIB),
    # A campaign's pacing asks for up to 1,000 placements' slot ranges at once.
    "CountAdDeliveries": _REPORT,
}


def inputs(settings: Settings) -> InputRules:
    return {f"/{SERVICE}/{method}": rule for method, rule in _INPUTS_BY_METHOD.items()}
