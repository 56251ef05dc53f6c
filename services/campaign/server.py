"""Wires the campaign service: its settings, its peers (catalog, analytics, tenant),
the operations, and the background jobs (the completion sweep, the audit relay)."""

from __future__ import annotations

from grpc import aio
from podmesh.campaign.v1 import campaign_pb2_grpc
from pydantic import Field

from services.campaign.adops import AdOps
from services.campaign.peers import Analytics, Catalog
from services.campaign.permissions import RULES, SERVICE
from services.campaign.repository import AUDIT
from services.campaign.servicer import CampaignServicer
from services.campaign.sweep import Sweeper
from services.shared.audit_outbox import start_relay
from services.shared.change_epochs import CATALOG, ChangeEpochs
from services.shared.config import Settings
from services.shared.server import Resources, ServiceDefinition


class CampaignSettings(Settings):
    # How often flights that ended complete their campaigns and line items.
    sweep_interval_s: float = Field(default=30.0, gt=0)
    # How long a pacing answer is reused (services.campaign.pacing.PacingCache); 0 off.
    pacing_cache_ttl_s: float = Field(default=5.0, ge=0)
    # How long the catalog's change counter is taken as current: a booking sees a
    # catalog change (an episode's slots, publication, explicit flag) at most this
    # much after it committed (services.campaign.peers.Catalog); 0 asks Redis each time.
    catalog_recheck_s: float = Field(default=0.5, ge=0, le=10)
    # How often audit records go to the tenant service's audit log.
    audit_relay_interval_s: float = Field(default=1.0, gt=0)


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, CampaignSettings)
    ops = AdOps(
        resources.db,
        resources.page_tokens,
        Catalog(
            resources.channel("catalog"),
            ChangeEpochs(resources.redis, CATALOG, recheck_s=settings.catalog_recheck_s),
        ),
        Analytics(resources.channel("analytics")),
        resources.redis,
        settings.pacing_cache_ttl_s,
    )
    sweeper = Sweeper(resources.db, settings.sweep_interval_s)
    sweeper.start()
    relay = start_relay(resources, AUDIT, settings.audit_relay_interval_s)
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(
        CampaignServicer(ops, background=(sweeper, relay)), server
    )


DEFINITION = ServiceDefinition(
    name="campaign",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=CampaignSettings,
)
