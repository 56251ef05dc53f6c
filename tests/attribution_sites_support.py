"""Helpers of the attribution site event tests: a tenant with a sponsor and a pixel,
events, and the household id a client address hashes to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeAlias

from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.client_ip import IpHasher
from tests.campaign_support import create_sponsor
from tests.support import bearer, create_tenant

AttributionStub: TypeAlias = "attribution_pb2_grpc.AttributionServiceAsyncStub"
CampaignStub: TypeAlias = "campaign_pb2_grpc.CampaignServiceAsyncStub"
TenantStub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
# The sponsor domain tests/campaign_support.create_sponsor gives.
SPONSOR_DOMAIN = "acme.example"
SHOP = "https://shop.acme.example"


@dataclass(frozen=True)
class Site:
    tenant_id: str
    key: str
    sponsor_id: str
    pixel: pb.Pixel


async def create_site(
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    attribution: AttributionStub,
    allowed_origins: tuple[str, ...] = (SHOP,),
) -> Site:
    tenant = await create_tenant(tenants, stack.admin_token, "attr")
    sponsor = await create_sponsor(campaigns, tenant.owner_key)
    created = await attribution.CreatePixel(
        pb.CreatePixelRequest(
            pixel=pb.Pixel(
                sponsor_id=sponsor.id, display_name="shop", allowed_origins=allowed_origins
            )
        ),
        metadata=bearer(tenant.owner_key),
    )
    return Site(tenant.id, tenant.owner_key, sponsor.id, created.pixel)


def page_view(pixel_id: str, event_id: str | None = None, **fields: object) -> pb.SiteEvent:
    return pb.SiteEvent(
        id=uuid.uuid4().hex if event_id is None else event_id,
        type=pb.SITE_EVENT_TYPE_PAGE_VIEW,
        pixel_id=pixel_id,
        **fields,  # type: ignore[arg-type]
    )


def household(stack: Stack, tenant_id: str, client_ip: str) -> str:
    """The household id (hex) the platform derives from a client address."""
    return IpHasher(stack.secrets.ip_hash_secret.encode(), tenant_id).household_id(client_ip).hex()
