"""Cross-cutting runtime behaviour every service shares, seen through the tenant service."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import pytest
from podmesh.tenant.v1 import tenant_pb2 as pb

from devstack.stack import Stack
from services.shared.auth import PrincipalType, Scope
from services.shared.introspection import RemoteApiKeyVerifier
from tests.integration.test_tenant_grpc import Stub
from tests.support import bearer, create_tenant


async def test_other_services_verify_keys_through_introspection_with_a_short_cache(
    tenants: Stub, tenant_channel: grpc.aio.Channel, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    created = await tenants.CreateApiKey(
        pb.CreateApiKeyRequest(
            api_key=pb.ApiKey(display_name="ingest", scopes=[pb.API_KEY_SCOPE_INGEST])
        ),
        metadata=bearer(tenant.owner_key),
    )
    verifier = RemoteApiKeyVerifier(tenant_channel, ttl_s=0.5)
    principal = await verifier.verify_api_key(created.secret)
    assert principal is not None
    assert principal.type is PrincipalType.API_KEY
    assert principal.tenant_id == uuid.UUID(tenant.id)
    assert principal.scopes == {Scope.INGEST}

    await tenants.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=bearer(tenant.owner_key)
    )
    # Within the cache lifetime the earlier answer stands; after it, the revocation shows.
    assert await verifier.verify_api_key(created.secret) == principal
    await asyncio.sleep(0.6)
    assert await verifier.verify_api_key(created.secret) is None


async def test_client_request_id_reaches_the_audit_log(
    http: httpx.AsyncClient, tenants: Stub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    request_id = f"req-{uuid.uuid4().hex}"
    response = await http.post(
        "/api/v1/apiKeys",
        json={"apiKey": {"displayName": "traced", "scopes": ["API_KEY_SCOPE_READ"]}},
        headers={"authorization": f"Bearer {tenant.owner_key}", "x-request-id": request_id},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=1), metadata=bearer(tenant.owner_key)
    )
    assert audit.audit_events[0].request_id == request_id


async def test_prometheus_counts_rpcs_by_method_and_code(tenants: Stub, stack: Stack) -> None:
    with_code = (
        'podmesh_rpc_requests_total{code="UNAUTHENTICATED",method="ListUsers",service="tenant"}'
    )
    async with httpx.AsyncClient() as client:
        before = _sample((await client.get(stack.metrics_url("tenant"))).text, with_code)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                await tenants.ListUsers(pb.ListUsersRequest(), metadata=bearer("pk_unknown"))
        after = _sample((await client.get(stack.metrics_url("tenant"))).text, with_code)
    assert after - before == 3


def _sample(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
