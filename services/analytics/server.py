"""Wires the analytics service: one servicer over separate collaborators, each built
here from the shared resources (pool, Redis, peer channels)."""

from __future__ import annotations

from grpc import aio
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from pydantic import Field

from services.analytics.audit import start_audit_relay
from services.analytics.counting import default_classifier
from services.analytics.counting_settings import CountingSettingsStore
from services.analytics.exposure_relay import ExposureRelay
from services.analytics.ingest.episodes import EpisodeResolver
from services.analytics.ingest.ingestor import IngestSettings, build_ingestion
from services.analytics.live.watch import LiveWatcher
from services.analytics.peers import CatalogReleases, TenantProfiles
from services.analytics.permissions import RULES, SERVICE, inputs
from services.analytics.prefix import receiver as prefix_receiver
from services.analytics.queries.ad_deliveries import AdDeliveryCounter
from services.analytics.queries.households import PodcastHouseholds
from services.analytics.queries.ingest_usage import IngestUsageReader
from services.analytics.queries.metrics import MetricsReader
from services.analytics.queries.report_cache import ReportCache
from services.analytics.servicer import AnalyticsServicer
from services.shared.server import Resources, ServiceDefinition


class AnalyticsSettings(IngestSettings):
    # Disclosed with every report (Methodology.methodology_url).
    methodology_url: str = "https://podmesh.dev/docs/methodology"
    # QueryMetrics answers kept for reuse while the tenant's counts are unchanged
    # (services.analytics.queries.report_cache); 0 turns the cache off.
    query_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # At most this old, since a report says until when its numbers are complete.
    query_cache_ttl_s: float = Field(default=60.0, gt=0)
    # How often audit records (services.shared.audit_outbox) go to the tenant's log.
    audit_relay_interval_s: float = Field(default=1.0, gt=0)
    # How often counted ad deliveries go to attribution as exposures
    # (services.analytics.exposure_relay).
    exposure_relay_interval_s: float = Field(default=0.5, gt=0)


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AnalyticsSettings)
    tenants = TenantProfiles(
        resources.channel("tenant"),
        settings.admin_token.get_secret_value(),
        settings.tenant_settings_ttl_s,
    )
    metrics = MetricsReader(
        resources.db,
        tenants,
        CatalogReleases(resources.channel("catalog")),
        resources.page_tokens,
        settings.methodology_url,
        # The version ingestion and rebuilds classify with, the process-wide lists.
        default_classifier().version,
    )
    watcher = LiveWatcher(resources.db, resources.redis, tenants)
    counting_settings = CountingSettingsStore(resources.db)
    ingestor, rebuilder = await build_ingestion(resources, tenants, counting_settings)
    reports: ReportCache[pb.QueryMetricsResponse] = ReportCache(
        resources.db, max_bytes=settings.query_cache_bytes, ttl_s=settings.query_cache_ttl_s
    )
    servicer = AnalyticsServicer(
        metrics,
        watcher,
        counting_settings,
        ingestor,
        rebuilder,
        reports,
        AdDeliveryCounter(resources.db, tenants),
        IngestUsageReader(resources.db),
        PodcastHouseholds(resources.db),
    )
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
    start_audit_relay(resources, settings.audit_relay_interval_s)
    ExposureRelay(
        resources.db,
        resources.channel("attribution"),
        settings.admin_token.get_secret_value(),
        settings.exposure_relay_interval_s,
    ).start()
    prefix_receiver.register(
        server,
        prefix_receiver.PrefixRecorder(
            resources.db,
            tenants,
            EpisodeResolver(
                resources.channel("catalog"),
                settings.episode_cache_ttl_s,
                settings.episode_negative_ttl_s,
                names_tenant=True,
            ),
            # The platform credential: the catalog resolves for the tenant each
            # request's prefix names, and allows naming one to this credential only.
            (("authorization", f"Bearer {settings.admin_token.get_secret_value()}"),),
            settings.ip_hash_secret.get_secret_value().encode(),
        ),
    )


DEFINITION = ServiceDefinition(
    name="analytics",
    service_names=(SERVICE, prefix_receiver.SERVICE),
    rules=RULES | prefix_receiver.RULES,
    register=register,
    settings_type=AnalyticsSettings,
    inputs=lambda settings: {**inputs(settings), **prefix_receiver.INPUTS},
)
