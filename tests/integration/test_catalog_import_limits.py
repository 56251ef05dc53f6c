"""ImportFeed admission: one import per tenant at a time, and a bound on all
tenants' imports together; past them RESOURCE_EXHAUSTED, never a queue."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.catalog.support import generated_feed
from tests.support import bearer, create_tenant, error_info

Stub: TypeAlias = "catalog_pb2_grpc.CatalogServiceAsyncStub"


async def _until_imports_wait(owner: asyncpg.Connection, count: int) -> None:
    """Until `count` imports wait on their tenant's import lock, held by the test."""
    for _ in range(400):
        waiting = await owner.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the imports never reached their lock")


async def _import_body(catalog: Stub, key: str, body: bytes) -> pb.ImportFeedResponse:
    return await catalog.ImportFeed(
        pb.ImportFeedRequest(feed_body=body), metadata=bearer(key), timeout=20
    )


async def _refusal(catalog: Stub, key: str, body: bytes) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _import_body(catalog, key, body)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    return str(error_info(raised.value).reason)


async def test_one_import_per_tenant_and_a_bound_on_all(
    catalog: Stub,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
    owner_conn: asyncpg.Connection,
) -> None:
    first, second, third = [
        await create_tenant(tenants, stack.admin_token, "busy") for _ in range(3)
    ]
    feeds = {
        t.id: generated_feed(5, title=f"Show {n}", host=f"busy{n}")
        for n, t in enumerate((first, second, third))
    }
    # The test holds each tenant's import lock (the one imports take in the
    # database), so an import it lets start stays running until released.
    hold = owner_conn.transaction()
    await hold.start()
    try:
        await owner_conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"catalog-import:{first.id}",
        )
        running = asyncio.ensure_future(_import_body(catalog, first.owner_key, feeds[first.id]))
        await _until_imports_wait(owner_conn, 1)
        assert await _refusal(catalog, first.owner_key, feeds[first.id]) == "IMPORT_IN_PROGRESS"
        # Another tenant is not held up meanwhile.
        other = await _import_body(catalog, second.owner_key, feeds[second.id])
        assert other.created_episode_count == 5

        await owner_conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"catalog-import:{second.id}",
        )
        also_running = asyncio.ensure_future(
            _import_body(catalog, second.owner_key, feeds[second.id])
        )
        await _until_imports_wait(owner_conn, 2)
        # Two imports run (the stack's limit), so a third tenant's is refused too.
        assert await _refusal(catalog, third.owner_key, feeds[third.id]) == "IMPORTS_BUSY"
    finally:
        await hold.rollback()
    assert (await running).created_episode_count == 5
    assert (await also_running).unchanged_episode_count == 5
    assert (await _import_body(catalog, third.owner_key, feeds[third.id])).podcast_created
    assert (await _import_body(catalog, first.owner_key, feeds[first.id])).unchanged_episode_count
