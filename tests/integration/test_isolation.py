"""Tenant isolation: through the API, and in the database itself."""

from __future__ import annotations

import uuid
from typing import TypeAlias

import asyncpg
import grpc
import httpx
import pytest
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.support import bearer, create_tenant, create_user

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


async def test_another_tenants_resources_are_not_found(
    tenants: Stub, http: httpx.AsyncClient, stack: Stack
) -> None:
    a = await create_tenant(tenants, stack.admin_token, "a")
    b = await create_tenant(tenants, stack.admin_token, "b")
    a_user = await create_user(tenants, a.owner_key, pb.ROLE_VIEWER)
    a_key = await tenants.CreateApiKey(
        pb.CreateApiKeyRequest(api_key=pb.ApiKey(display_name="k", scopes=[pb.API_KEY_SCOPE_READ])),
        metadata=bearer(a.owner_key),
    )

    for path in (
        f"/api/v1/users/{a_user.id}",
        f"/api/v1/apiKeys/{a_key.api_key.id}",
        f"/api/v1/tenants/{a.id}",
    ):
        response = await http.get(path, headers={"authorization": f"Bearer {b.owner_key}"})
        assert response.status_code == 404, path

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tenants.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id=a_key.api_key.id), metadata=bearer(b.owner_key)
        )
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    still = await tenants.GetApiKey(
        pb.GetApiKeyRequest(api_key_id=a_key.api_key.id), metadata=bearer(a.owner_key)
    )
    assert still.api_key.state == pb.API_KEY_STATE_ACTIVE


async def test_app_role_owns_nothing_and_cannot_bypass_rls(owner_conn: asyncpg.Connection) -> None:
    role = await owner_conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'podmesh_app'"
    )
    assert role is not None
    assert not role["rolsuper"]
    assert not role["rolbypassrls"]
    owned = await owner_conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = 'podmesh_app'"
    )
    assert owned == 0


async def test_every_tenant_table_forces_row_level_security(owner_conn: asyncpg.Connection) -> None:
    rows = await owner_conn.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
               (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
          AND NOT c.relispartition
        """
    )
    assert {r["relname"] for r in rows} >= {"tenants", "users", "api_keys", "audit_events"}
    for row in rows:
        assert row["relrowsecurity"], row["relname"]
        assert row["relforcerowsecurity"], row["relname"]
        assert row["policies"] >= 1, row["relname"]


async def test_app_role_sees_only_the_tenant_it_names(tenants: Stub, stack: Stack) -> None:
    a = await create_tenant(tenants, stack.admin_token, "a")
    b = await create_tenant(tenants, stack.admin_token, "b")
    await create_user(tenants, a.owner_key, pb.ROLE_VIEWER)
    await create_user(tenants, b.owner_key, pb.ROLE_VIEWER)

    conn = await asyncpg.connect(stack.app_dsn)
    try:
        for table in ("tenants", "users", "api_keys", "audit_events"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", a.id)
            tenant_ids = {
                r["tenant_id"]
                for table in ("tenants", "users", "api_keys", "audit_events")
                for r in await conn.fetch(f"SELECT tenant_id FROM {table}")
            }
            assert tenant_ids == {uuid.UUID(a.id)}
        # After the transaction the setting is gone again.
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _insert_user_as(conn, acting_as=a.id, row_tenant=b.id)
    finally:
        await conn.close()


async def _insert_user_as(conn: asyncpg.Connection, *, acting_as: str, row_tenant: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", acting_as)
        await conn.execute(
            "INSERT INTO users (tenant_id, user_id, email, role, password_hash) "
            "VALUES ($1, $2, 'x@example.com', 4, 'x')",
            uuid.UUID(row_tenant),
            uuid.uuid4(),
        )
