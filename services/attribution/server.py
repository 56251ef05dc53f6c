"""Wires the attribution service: its settings, its peers and its operations."""

from __future__ import annotations

from grpc import aio
from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.peers import CampaignPeer
from services.attribution.permissions import RULES, SERVICE, inputs
from services.attribution.servicer import AttributionServicer
from services.attribution.sites.limits import PixelRateLimiter
from services.attribution.sites.service import SiteEvents, SiteSettings
from services.attribution.sites.store import SiteEventStore
from services.shared.leases import PeriodicLease
from services.shared.server import Resources, ServiceDefinition


class AttributionSettings(SiteSettings):
    pass


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AttributionSettings)
    sites = SiteEvents(
        await SiteEventStore.create(resources.db),
        CampaignPeer(resources.channel("campaign")),
        PixelRateLimiter(resources.redis, settings.pixel_calls_per_minute),
        settings,
    )
    sites.start_upkeep(
        PeriodicLease(
            resources.db,
            resources.redis,
            "attribution",
            "site-events-upkeep",
            settings.maintenance_interval_s,
        )
    )
    servicer = AttributionServicer(sites=sites, page_tokens=resources.page_tokens)  # type: ignore[abstract]
    attribution_pb2_grpc.add_AttributionServiceServicer_to_server(servicer, server)


DEFINITION = ServiceDefinition(
    name="attribution",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=AttributionSettings,
    inputs=inputs,
)
