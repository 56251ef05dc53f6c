"""The catalog holds a tenant to its plan's podcast quota (EffectiveQuota.max_podcasts)."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from tests.billing_support import request_id
from tests.catalog.support import generated_feed
from tests.support import TenantHandle, bearer, create_tenant, error_info

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"
Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
FREE_PODCASTS = 3


async def _free_tenant(tenants: Tenants, stack: Stack) -> TenantHandle:
    tenant = await create_tenant(tenants, stack.admin_token, "quota")
    await tenants.StartSubscription(
        tenant_pb2.StartSubscriptionRequest(tenant_id=tenant.id, plan="free"),
        metadata=bearer(tenant.owner_key) + request_id(),
    )
    got = await tenants.GetTenant(
        tenant_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )
    assert got.tenant.effective_quota.max_podcasts == FREE_PODCASTS
    return tenant


async def _create(catalog: Stub, tenant: TenantHandle, title: str) -> pb.Podcast:
    response = await catalog.CreatePodcast(
        pb.CreatePodcastRequest(podcast=pb.Podcast(title=title)),
        metadata=bearer(tenant.owner_key),
    )
    return response.podcast


async def _count(catalog: Stub, tenant: TenantHandle) -> int:
    response = await catalog.ListPodcasts(
        pb.ListPodcastsRequest(page_size=100), metadata=bearer(tenant.owner_key)
    )
    return len(response.podcasts)


def _assert_quota_exceeded(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "PODCAST_QUOTA_EXCEEDED"
    assert info.metadata["limit"] == str(FREE_PODCASTS)


async def test_free_tenant_cannot_create_a_podcast_past_its_quota(
    catalog: Stub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await _free_tenant(tenants, stack)
    for n in range(FREE_PODCASTS):
        await _create(catalog, tenant, f"Show {n}")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create(catalog, tenant, "One too many")
    _assert_quota_exceeded(refused.value)
    assert await _count(catalog, tenant) == FREE_PODCASTS


async def test_import_of_a_new_feed_past_the_quota_is_refused_even_validate_only(
    catalog: Stub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await _free_tenant(tenants, stack)
    first = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=generated_feed(2, title="Imported", host="quota-a")),
        metadata=bearer(tenant.owner_key),
    )
    assert first.podcast_created
    for n in range(FREE_PODCASTS - 1):
        await _create(catalog, tenant, f"Show {n}")

    new_feed = generated_feed(2, title="Another", host="quota-b")
    for validate_only in (True, False):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalog.ImportFeed(
                pb.ImportFeedRequest(feed_body=new_feed, validate_only=validate_only),
                metadata=bearer(tenant.owner_key),
            )
        _assert_quota_exceeded(refused.value)
    assert await _count(catalog, tenant) == FREE_PODCASTS

    # Importing a podcast the tenant already has creates nothing, and goes on working.
    again = await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=generated_feed(3, title="Imported", host="quota-a")),
        metadata=bearer(tenant.owner_key),
    )
    assert not again.podcast_created
    assert again.podcast.id == first.podcast.id
    assert again.created_episode_count == 1


async def test_concurrent_creates_cannot_both_take_the_last_place(
    catalog: Stub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await _free_tenant(tenants, stack)
    for n in range(FREE_PODCASTS - 1):
        await _create(catalog, tenant, f"Show {n}")

    results = await asyncio.gather(
        *(_create(catalog, tenant, f"Racer {n}") for n in range(6)), return_exceptions=True
    )
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refusals) == 5
    for refusal in refusals:
        _assert_quota_exceeded(refusal)
    assert await _count(catalog, tenant) == FREE_PODCASTS


async def test_managed_tenant_has_no_podcast_limit(
    catalog: Stub, tenants: Tenants, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "managed")
    got = await tenants.GetTenant(
        tenant_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )
    assert got.tenant.effective_quota.max_podcasts == 0
    for n in range(FREE_PODCASTS + 2):
        await _create(catalog, tenant, f"Show {n}")
    assert await _count(catalog, tenant) == FREE_PODCASTS + 2
