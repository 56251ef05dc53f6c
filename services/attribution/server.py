"""Wires the attribution service: its settings, its peers and its operations."""

from __future__ import annotations

from grpc import aio
from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.peers import Campaigns
from services.attribution.permissions import RULES, SERVICE
from services.attribution.reports.cache import ReportCache
from services.attribution.reports.conversions import Conversions
from services.attribution.reports.service import Reports
from services.attribution.servicer import AttributionServicer
from services.shared.config import Settings
from services.shared.server import Resources, ServiceDefinition


class AttributionSettings(Settings):
    # Computed reports are reused while the tenant's attribution version holds, at most
    # this long (0 turns the cache off).
    attribution_report_cache_ttl_s: int = 600


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AttributionSettings)
    campaigns = Campaigns(resources.channel("campaign"))
    reports = Reports(
        resources.db,
        campaigns,
        ReportCache(resources.redis, ttl_s=settings.attribution_report_cache_ttl_s),
    )
    servicer = AttributionServicer(  # type: ignore[abstract]
        reports=reports,
        conversions=Conversions(resources.db, campaigns, resources.page_tokens),
    )
    attribution_pb2_grpc.add_AttributionServiceServicer_to_server(servicer, server)


DEFINITION = ServiceDefinition(
    name="attribution",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=AttributionSettings,
)
