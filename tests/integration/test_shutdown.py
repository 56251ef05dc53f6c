"""SIGTERM drains: an RPC in flight when the signal arrives still completes."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import grpc
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.support import bearer, create_tenant


async def test_in_flight_rpc_completes_on_sigterm(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        stub = tenant_pb2_grpc.TenantServiceStub(channel)
        tenant = await create_tenant(stub, stack.admin_token)
        owner = await asyncpg.connect(stack.owner_dsn)
        try:
            # Hold a lock the RPC needs, so it is provably in flight when SIGTERM lands.
            lock = owner.transaction()
            await lock.start()
            await owner.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            call = asyncio.ensure_future(
                stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(tenant.owner_key), timeout=30)
            )
            await _until_waiting_on_lock(owner)
            stopping = asyncio.ensure_future(stack.stop_service("tenant", signal.SIGTERM))
            await asyncio.sleep(0.5)
            assert not call.done()
            await lock.rollback()
            response = await call
            assert list(response.users) == []
            assert await stopping == 0
        finally:
            await owner.close()
    await stack.start_service("tenant")
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        stub = tenant_pb2_grpc.TenantServiceStub(channel)
        again = await stub.GetTenant(
            pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
        )
        assert again.tenant.id == tenant.id


async def _until_waiting_on_lock(conn: asyncpg.Connection) -> None:
    for _ in range(200):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND usename = 'podmesh_app'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the RPC never reached the database")
