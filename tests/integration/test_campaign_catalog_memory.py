"""The campaign service's memory of catalog answers (services.campaign.peers.Catalog),
against the real catalog service and Redis: an answer is reused while the catalog's
change counter reads the same, a change through the catalog is seen by the next read,
and nothing is remembered for a caller who may not read the catalog or while Redis is
unreachable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TypeAlias

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.catalog.v1 import catalog_pb2 as kpb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.campaign.peers import Catalog
from services.shared.auth import Principal, PrincipalType, Scope
from services.shared.change_epochs import CATALOG, ChangeEpochs
from services.shared.context import principal_var
from services.shared.errors import NotFound
from services.shared.server import create_redis
from tests.campaign_support import create_inventory
from tests.support import TenantHandle, bearer, create_tenant

TenantStub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.service_addr("catalog")) as opened:
        yield opened


async def episode_of(
    stack: Stack, tenants: TenantStub, channel: grpc.aio.Channel
) -> tuple[TenantHandle, kpb.Episode]:
    tenant = await create_tenant(tenants, stack.admin_token, "memo")
    inventory = await create_inventory(
        catalog_pb2_grpc.CatalogServiceStub(channel), tenant.owner_key
    )
    return tenant, inventory.episodes[0]


def acting_as(tenant: TenantHandle, *scopes: Scope) -> None:
    principal_var.set(
        Principal(
            type=PrincipalType.API_KEY, tenant_id=uuid.UUID(tenant.id), scopes=frozenset(scopes)
        )
    )


async def unpublish_behind_the_catalogs_back(
    stack: Stack, tenant: TenantHandle, episode_id: str
) -> None:
    """Changes the episode without the catalog service, so its counter stays put."""
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant.id)
            changed = await conn.execute(
                "UPDATE episodes SET publish_at = NULL WHERE episode_id = $1", uuid.UUID(episode_id)
            )
        assert changed == "UPDATE 1"
    finally:
        await conn.close()


@pytest.fixture
async def writer(
    stack: Stack, tenants: TenantStub, channel: grpc.aio.Channel, redis: aioredis.Redis
) -> tuple[TenantHandle, kpb.Episode, Catalog]:
    """A new tenant's episode, and the campaign's catalog client acting for a caller of
    that tenant who may write (and so read the catalog)."""
    tenant, episode = await episode_of(stack, tenants, channel)
    acting_as(tenant, Scope.WRITE)
    return tenant, episode, Catalog(channel, ChangeEpochs(redis, CATALOG))


async def test_an_answer_is_reused_until_the_catalog_counter_moves(
    stack: Stack, redis: aioredis.Redis, writer: tuple[TenantHandle, kpb.Episode, Catalog]
) -> None:
    tenant, episode, catalog = writer
    episode_id = uuid.UUID(episode.id)
    first = await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=True)
    assert first.publish_at is not None
    assert first.podcast_categories == ("Business",)

    await unpublish_behind_the_catalogs_back(stack, tenant, episode.id)
    assert await catalog.episode(episode_id, bearer(tenant.owner_key)) == first

    await ChangeEpochs(redis, CATALOG).bump(uuid.UUID(tenant.id))
    fresh = await catalog.episode(episode_id, bearer(tenant.owner_key))
    assert fresh.publish_at is None


async def test_a_change_through_the_catalog_is_seen_by_the_next_read(
    channel: grpc.aio.Channel, writer: tuple[TenantHandle, kpb.Episode, Catalog]
) -> None:
    tenant, episode, catalog = writer
    episode_id = uuid.UUID(episode.id)
    before = await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=False)
    assert len(before.slots) == 2

    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    await stub.UpdateEpisode(
        kpb.UpdateEpisodeRequest(
            episode=kpb.Episode(id=episode.id, ad_slots=[episode.ad_slots[0]]),
            update_mask=FieldMask(paths=["ad_slots"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    after = await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=False)
    assert [s.id for s in after.slots] == [uuid.UUID(episode.ad_slots[0].id)]

    await stub.DeleteEpisode(
        kpb.DeleteEpisodeRequest(episode_id=episode.id), metadata=bearer(tenant.owner_key)
    )
    with pytest.raises(NotFound):
        await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=False)


async def asks_each_time(
    stack: Stack, tenant: TenantHandle, episode: kpb.Episode, catalog: Catalog
) -> None:
    """A change behind the catalog's back shows in the next read: nothing was kept."""
    episode_id = uuid.UUID(episode.id)
    first = await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=False)
    assert first.publish_at is not None
    await unpublish_behind_the_catalogs_back(stack, tenant, episode.id)
    again = await catalog.episode(episode_id, bearer(tenant.owner_key), with_podcast=False)
    assert again.publish_at is None


async def test_nothing_is_remembered_for_a_caller_who_may_not_read_the_catalog(
    stack: Stack, tenants: TenantStub, channel: grpc.aio.Channel, redis: aioredis.Redis
) -> None:
    tenant, episode = await episode_of(stack, tenants, channel)
    acting_as(tenant, Scope.INGEST)
    await asks_each_time(stack, tenant, episode, Catalog(channel, ChangeEpochs(redis, CATALOG)))


async def test_nothing_is_remembered_while_redis_is_unreachable(
    stack: Stack, tenants: TenantStub, channel: grpc.aio.Channel
) -> None:
    tenant, episode = await episode_of(stack, tenants, channel)
    acting_as(tenant, Scope.WRITE)
    dead = create_redis("redis://127.0.0.1:9/0")
    try:
        await asks_each_time(stack, tenant, episode, Catalog(channel, ChangeEpochs(dead, CATALOG)))
    finally:
        await dead.aclose()
