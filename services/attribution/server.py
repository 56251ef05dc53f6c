"""Wires the attribution service: its settings, its peers and its operations."""

from __future__ import annotations

from grpc import aio
from podmesh.attribution.v1 import attribution_pb2_grpc
from pydantic import Field

from services.attribution import permissions
from services.attribution.exposures import servicer as exposure_rpcs
from services.attribution.exposures.bookings import SlotBookings
from services.attribution.exposures.operations import Exposures, ExposureSettings
from services.attribution.exposures.repository import ExposureStore
from services.attribution.peers import Analytics, Campaigns
from services.attribution.permissions import RULES, SERVICE
from services.attribution.reports.cache import ReportCache
from services.attribution.reports.conversions import Conversions
from services.attribution.reports.service import Reports
from services.attribution.servicer import AttributionServicer
from services.attribution.sites.limits import PixelRateLimiter
from services.attribution.sites.service import SiteEvents, SiteSettings
from services.attribution.sites.store import SiteEventStore
from services.shared.config import Settings
from services.shared.inputs import InputRules
from services.shared.leases import PeriodicLease
from services.shared.server import Resources, ServiceDefinition


class AttributionSettings(SiteSettings):
    # Computed reports are reused while the tenant's attribution version holds, at most
    # this long (0 turns the cache off).
    attribution_report_cache_ttl_s: int = Field(default=600, ge=0)
    # How long a booked or live placement is trusted from memory (a cancellation
    # reaches exposures within this); completed and cancelled ones never change.
    placement_cache_ttl_s: float = Field(default=30.0, gt=0)


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AttributionSettings)
    campaigns = Campaigns(resources.channel("campaign"), settings.admin_token.get_secret_value())
    sites = SiteEvents(
        await SiteEventStore.create(resources.db),
        campaigns,
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
    exposures = Exposures(
        resources.db,
        ExposureStore(resources.db, settings.raw_retention_days),
        campaigns,
        SlotBookings(campaigns, settings.placement_cache_ttl_s),
        resources.page_tokens,
        ExposureSettings(
            retention_days=settings.raw_retention_days,
            ip_hash_secret=settings.ip_hash_secret.get_secret_value().encode(),
            maintenance_interval_s=settings.maintenance_interval_s,
        ),
    )
    exposures.start_upkeep(
        PeriodicLease(
            resources.db,
            resources.redis,
            "attribution",
            "exposure-upkeep",
            settings.maintenance_interval_s,
        )
    )
    reports = Reports(
        resources.db,
        campaigns,
        Analytics(resources.channel("analytics")),
        ReportCache(resources.redis, ttl_s=settings.attribution_report_cache_ttl_s),
    )
    servicer = AttributionServicer(
        sites=sites,
        page_tokens=resources.page_tokens,
        exposures=exposures,
        reports=reports,
        conversions=Conversions(resources.db, campaigns, resources.page_tokens),
    )
    attribution_pb2_grpc.add_AttributionServiceServicer_to_server(servicer, server)


def inputs(settings: Settings) -> InputRules:
    return {
        **permissions.inputs(settings),
        **{f"/{SERVICE}/{method}": rule for method, rule in exposure_rpcs.INPUTS.items()},
    }


DEFINITION = ServiceDefinition(
    name="attribution",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=AttributionSettings,
    inputs=inputs,
)
