"""Wires the analytics service: one servicer over separate collaborators, each built
here from the shared resources (pool, Redis, peer channels)."""

from __future__ import annotations

from grpc import aio
from podmesh.analytics.v1 import analytics_pb2_grpc
from pydantic import Field

from services.analytics.counting_settings import CountingSettingsStore
from services.analytics.ingest import IngestSettings, build_ingestion
from services.analytics.metrics import MetricsReader
from services.analytics.peers import CatalogReleases, TenantClocks
from services.analytics.permissions import RULES, SERVICE
from services.analytics.servicer import AnalyticsServicer
from services.analytics.watch import LiveWatcher
from services.shared.server import Resources, ServiceDefinition


class AnalyticsSettings(IngestSettings):
    # Disclosed with every report (Methodology.methodology_url).
    methodology_url: str = "https://podmesh.dev/docs/methodology"
    # How long a tenant's time zone and counting window are cached.
    tenant_settings_ttl_s: float = Field(default=30.0, gt=0)


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AnalyticsSettings)
    clocks = TenantClocks(resources.channel("tenant"), settings.tenant_settings_ttl_s)
    metrics = MetricsReader(
        resources.db,
        clocks,
        CatalogReleases(resources.channel("catalog")),
        resources.page_tokens,
        settings.methodology_url,
    )
    watcher = LiveWatcher(resources.db, resources.redis, clocks)
    counting_settings = CountingSettingsStore(resources.db)
    ingestor, rebuilder = await build_ingestion(resources, counting_settings)
    servicer = AnalyticsServicer(metrics, watcher, counting_settings, ingestor, rebuilder)
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)


DEFINITION = ServiceDefinition(
    name="analytics",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=AnalyticsSettings,
)
