"""Bad requests get the right status and a clear reason, and change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.support import TenantHandle, create_tenant, create_user, login

TABLES = ("tenants", "users", "api_keys", "audit_events")


async def snapshot(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


@pytest.fixture
async def tenant(tenants: tenant_pb2_grpc.TenantServiceAsyncStub, stack: Stack) -> TenantHandle:
    return await create_tenant(tenants, stack.admin_token)


@pytest.fixture
async def unchanged(owner_conn: asyncpg.Connection) -> AsyncIterator[None]:
    before = await snapshot(owner_conn)
    yield
    assert await snapshot(owner_conn) == before


def violations(body: dict[str, Any]) -> list[str]:
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.BadRequest"):
            return [v["field"] for v in detail["fieldViolations"]]
    return []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer pk_this-key-was-never-issued"},
        {"authorization": "Bearer not.a.jwt"},
    ],
    ids=["missing", "empty", "wrong-scheme", "unknown-key", "malformed-token"],
)
async def test_bad_credentials_are_401(
    http: httpx.AsyncClient, headers: dict[str, str], unchanged: None
) -> None:
    response = await http.post(
        "/api/v1/apiKeys",
        json={"apiKey": {"displayName": "x", "scopes": ["API_KEY_SCOPE_READ"]}},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.json()["code"] == 16


async def test_viewer_calling_an_admin_rpc_is_403(
    http: httpx.AsyncClient,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    tenant: TenantHandle,
    owner_conn: asyncpg.Connection,
) -> None:
    viewer = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    token = await login(tenants, tenant.slug, viewer.email)
    before = await snapshot(owner_conn)
    response = await http.post(
        "/api/v1/apiKeys",
        json={"apiKey": {"displayName": "x", "scopes": ["API_KEY_SCOPE_READ"]}},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert "api_keys.write" in response.json()["message"]
    assert await snapshot(owner_conn) == before


async def test_invalid_fields_are_400_with_the_fields_named(
    http: httpx.AsyncClient, tenant: TenantHandle, unchanged: None
) -> None:
    response = await http.post(
        "/api/v1/users",
        json={"user": {"email": "not-an-email", "role": "ROLE_VIEWER"}, "password": "short"},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert response.status_code == 400
    assert violations(response.json()) == ["user.email", "password"]


async def test_malformed_json_is_400(
    http: httpx.AsyncClient, tenant: TenantHandle, unchanged: None
) -> None:
    response = await http.post(
        "/api/v1/users",
        content=b'{"user": {"email": ',
        headers={"authorization": f"Bearer {tenant.owner_key}", "content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_unknown_path_is_404(
    http: httpx.AsyncClient, tenant: TenantHandle, unchanged: None
) -> None:
    response = await http.get(
        "/api/v1/no-such-collection", headers={"authorization": f"Bearer {tenant.owner_key}"}
    )
    assert response.status_code == 404


async def test_unknown_query_parameter_is_400(
    http: httpx.AsyncClient, tenant: TenantHandle, unchanged: None
) -> None:
    response = await http.get(
        "/api/v1/users",
        params={"pageSize": 5, "bogus": 1},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert response.status_code == 400


async def test_oversized_body_is_413(
    http: httpx.AsyncClient, tenant: TenantHandle, unchanged: None
) -> None:
    response = await http.post(
        "/api/v1/users",
        json={"user": {"email": "big@example.com", "displayName": "x" * (5 * 1024 * 1024)}},
        headers={"authorization": f"Bearer {tenant.owner_key}"},
    )
    assert response.status_code == 413, response.text
