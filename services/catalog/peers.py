"""What the catalog asks the tenant service: the quotas in force for a tenant."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Protocol

import grpc
from grpc import aio
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from services.shared.peers import Metadata, forwarded, peer_error

log = logging.getLogger("podmesh.catalog.peers")

PEER_TIMEOUT_S = 5.0


class PodcastQuota(Protocol):
    async def max_podcasts(self, tenant_id: uuid.UUID, credentials: Metadata) -> int:
        """The most podcasts the tenant may hold; 0 for no limit."""
        ...


class TenantQuotas:
    """The tenant's podcast quota from GetTenant, cached per tenant for `ttl_s`.

    Asked with the caller's credential: every credential that may write the catalog
    may also read its tenant. A stale entry is used while the tenant service is
    unreachable, so podcasts can be created through its restarts.
    """

    def __init__(self, channel: aio.Channel, ttl_s: float) -> None:
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._ttl_s = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, int]] = {}

    async def max_podcasts(self, tenant_id: uuid.UUID, credentials: Metadata) -> int:
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._stub.GetTenant(
                tenant_pb2.GetTenantRequest(tenant_id=str(tenant_id)),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if cached is not None and error.code() == grpc.StatusCode.UNAVAILABLE:
                log.warning("tenant service unavailable: using the cached podcast quota")
                return cached[1]
            raise peer_error(error, "tenant", not_found=("tenant", str(tenant_id))) from None
        limit = response.tenant.effective_quota.max_podcasts
        self._cache[tenant_id] = (now + self._ttl_s, limit)
        return limit
