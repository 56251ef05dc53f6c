"""Helpers the integration tests share: credentials, tenants, rich errors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
PASSWORD = "correct horse battery staple"


def bearer(credential: str) -> Metadata:
    return (("authorization", f"Bearer {credential}"),)


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class TenantHandle:
    id: str
    slug: str
    owner_key: str


async def create_tenant(
    stub: tenant_pb2_grpc.TenantServiceAsyncStub, admin_token: str, prefix: str = "t"
) -> TenantHandle:
    slug = unique_slug(prefix)
    response = await stub.CreateTenant(
        pb.CreateTenantRequest(tenant=pb.Tenant(slug=slug, display_name=f"Tenant {slug}")),
        metadata=bearer(admin_token),
    )
    return TenantHandle(response.tenant.id, slug, response.api_key_secret)


async def create_user(
    stub: tenant_pb2_grpc.TenantServiceAsyncStub,
    credential: str,
    role: pb.Role,
    email: str | None = None,
) -> pb.User:
    response = await stub.CreateUser(
        pb.CreateUserRequest(
            user=pb.User(email=email or f"{uuid.uuid4().hex[:8]}@example.com", role=role),
            password=PASSWORD,
        ),
        metadata=bearer(credential),
    )
    return response.user


async def login(stub: tenant_pb2_grpc.TenantServiceAsyncStub, slug: str, email: str) -> str:
    response = await stub.Login(pb.LoginRequest(tenant_slug=slug, email=email, password=PASSWORD))
    return response.access_token


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no google.rpc.Status in the error: {error}")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    for detail in rich_status(error).details:
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo detail")


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    bad = error_details_pb2.BadRequest()
    for detail in rich_status(error).details:
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []
