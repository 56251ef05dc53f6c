"""Wires the catalog service: its settings, the feed fetcher, the operations and the
relay of its audit records."""

from __future__ import annotations

from grpc import aio
from podmesh.catalog.v1 import catalog_pb2_grpc

from services.catalog.catalog import Catalog
from services.catalog.config import CatalogSettings
from services.catalog.fetch import Fetcher, any_address, is_public
from services.catalog.imports import Offloader
from services.catalog.peers import TenantQuotas
from services.catalog.permissions import RULES, SERVICE, inputs
from services.catalog.repository import AUDIT
from services.catalog.servicer import CatalogServicer
from services.shared.audit_outbox import start_relay
from services.shared.change_epochs import CATALOG, ChangeEpochs
from services.shared.server import Resources, ServiceDefinition


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, CatalogSettings)
    fetcher = Fetcher(
        timeout_s=settings.feed_timeout_s,
        max_redirects=settings.feed_max_redirects,
        address_allowed=any_address if settings.feed_allow_private_addresses else is_public,
    )
    offloader = Offloader(settings.feed_offload, settings.imports_max_concurrent)
    quota = TenantQuotas(resources.channel("tenant"), settings.tenant_quota_ttl_s)
    catalog = Catalog(
        resources.db,
        resources.page_tokens,
        fetcher,
        settings,
        offloader,
        quota,
        ChangeEpochs(resources.redis, CATALOG),
    )
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(catalog), server)
    start_relay(resources, AUDIT, settings.audit_relay_interval_s)


DEFINITION = ServiceDefinition(
    name="catalog",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=CatalogSettings,
    inputs=inputs,
)
