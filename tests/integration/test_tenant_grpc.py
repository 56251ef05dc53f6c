"""Tenant flows over native gRPC, on the service's own port and through Envoy."""

from __future__ import annotations

import uuid
from typing import TypeAlias

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.support import (
    PASSWORD,
    bearer,
    create_tenant,
    create_user,
    error_info,
    login,
    violated_fields,
)

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


@pytest.fixture(params=["direct", "gateway"])
def stub(request: pytest.FixtureRequest, tenants: Stub, gateway_tenants: Stub) -> Stub:
    return tenants if request.param == "direct" else gateway_tenants


async def test_tenant_user_login_and_api_key_lifecycle(stub: Stub, stack: Stack) -> None:
    tenant = await create_tenant(stub, stack.admin_token)
    owner = await create_user(stub, tenant.owner_key, pb.ROLE_OWNER, "Owner@Example.com")
    assert owner.email == "owner@example.com"

    token = await login(stub, tenant.slug, "OWNER@example.com")
    fetched = await stub.GetUser(pb.GetUserRequest(user_id=owner.id), metadata=bearer(token))
    assert fetched.user.id == owner.id
    assert fetched.user.HasField("last_login_time")

    created = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            api_key=pb.ApiKey(display_name="dashboards", scopes=[pb.API_KEY_SCOPE_READ])
        ),
        metadata=bearer(token),
    )
    assert created.secret.startswith("pk_")
    assert created.secret.startswith(created.api_key.prefix)
    read_key = created.secret
    got = await stub.GetTenant(pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(read_key))
    assert got.tenant.slug == tenant.slug

    listed = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(token))
    assert created.api_key.id in [k.id for k in listed.api_keys]
    assert all(k.state == pb.API_KEY_STATE_ACTIVE for k in listed.api_keys)

    revoked = await stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=bearer(token)
    )
    assert revoked.api_key.state == pb.API_KEY_STATE_REVOKED
    assert revoked.api_key.HasField("revoke_time")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.GetTenant(pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(read_key))
    assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_info(denied.value).reason == "CREDENTIALS_INVALID"

    active = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(token))
    assert created.api_key.id not in [k.id for k in active.api_keys]
    everything = await stub.ListApiKeys(
        pb.ListApiKeysRequest(show_inactive=True), metadata=bearer(token)
    )
    assert created.api_key.id in [k.id for k in everything.api_keys]

    audit = await stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=bearer(token))
    methods = [e.method.rsplit("/", 1)[-1] for e in audit.audit_events]
    assert methods[:3] == ["RevokeApiKey", "CreateApiKey", "CreateUser"]
    assert methods[-1] == "CreateTenant"
    assert audit.audit_events[0].actor_id == owner.id
    assert audit.audit_events[0].request_id


async def test_users_page_through_in_stable_order(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    created = [(await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)).id for _ in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await tenants.ListUsers(
            pb.ListUsersRequest(page_size=2, page_token=token), metadata=bearer(tenant.owner_key)
        )
        seen += [u.id for u in page.users]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == created
    assert pages == 3


async def test_page_token_from_other_request_is_rejected(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    for _ in range(2):
        await tenants.CreateApiKey(
            pb.CreateApiKeyRequest(
                api_key=pb.ApiKey(display_name="k", scopes=[pb.API_KEY_SCOPE_READ])
            ),
            metadata=bearer(tenant.owner_key),
        )
    first = await tenants.ListApiKeys(
        pb.ListApiKeysRequest(page_size=1), metadata=bearer(tenant.owner_key)
    )
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tenants.ListApiKeys(
            pb.ListApiKeysRequest(
                page_size=1, page_token=first.next_page_token, show_inactive=True
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == ["page_token"]


async def test_update_mask_changes_only_named_fields(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    updated = await tenants.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=user.id, display_name="Renamed", role=pb.ROLE_ADMIN),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert updated.user.display_name == "Renamed"
    assert updated.user.role == pb.ROLE_VIEWER

    settings = await tenants.UpdateTenant(
        pb.UpdateTenantRequest(
            tenant=pb.Tenant(
                id=tenant.id,
                display_name="ignored",
                settings=pb.TenantSettings(
                    time_zone="America/New_York",
                    counting_window=pb.COUNTING_WINDOW_ROLLING_24H,
                ),
            ),
            update_mask=FieldMask(paths=["settings.time_zone"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    assert settings.tenant.settings.time_zone == "America/New_York"
    assert settings.tenant.settings.counting_window == pb.COUNTING_WINDOW_UTC_DAY
    assert settings.tenant.display_name == f"Tenant {tenant.slug}"


async def test_owners_are_protected(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    owner = await create_user(tenants, tenant.owner_key, pb.ROLE_OWNER)
    admin = await create_user(tenants, tenant.owner_key, pb.ROLE_ADMIN)
    admin_token = await login(tenants, tenant.slug, admin.email)

    with pytest.raises(grpc.aio.AioRpcError) as escalation:
        await create_user(tenants, admin_token, pb.ROLE_OWNER)
    assert escalation.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_info(escalation.value).reason == "PRIVILEGE_ESCALATION"

    with pytest.raises(grpc.aio.AioRpcError) as protected:
        await tenants.DeleteUser(
            pb.DeleteUserRequest(user_id=owner.id), metadata=bearer(admin_token)
        )
    assert protected.value.code() is grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as last_owner:
        await tenants.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=owner.id, role=pb.ROLE_ADMIN), update_mask=FieldMask(paths=["role"])
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert last_owner.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(last_owner.value).reason == "LAST_OWNER"


async def test_quotas_are_enforced_and_only_admins_set_them(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    quota_update = pb.UpdateTenantRequest(
        tenant=pb.Tenant(id=tenant.id, quota=pb.Quota(max_api_keys=2)),
        update_mask=FieldMask(paths=["quota.max_api_keys"]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as owner_try:
        await tenants.UpdateTenant(quota_update, metadata=bearer(tenant.owner_key))
    assert owner_try.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await tenants.UpdateTenant(quota_update, metadata=bearer(stack.admin_token))

    request = pb.CreateApiKeyRequest(
        api_key=pb.ApiKey(display_name="ingest", scopes=[pb.API_KEY_SCOPE_INGEST])
    )
    await tenants.CreateApiKey(request, metadata=bearer(tenant.owner_key))
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await tenants.CreateApiKey(request, metadata=bearer(tenant.owner_key))
    assert exhausted.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(exhausted.value).reason == "API_KEY_QUOTA_EXCEEDED"


async def test_slug_is_unique(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await tenants.CreateTenant(
            pb.CreateTenantRequest(tenant=pb.Tenant(slug=tenant.slug, display_name="Again")),
            metadata=bearer(stack.admin_token),
        )
    assert taken.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_info(taken.value).reason == "TENANT_SLUG_TAKEN"


async def test_only_the_platform_admin_creates_and_lists_tenants(
    tenants: Stub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenants.CreateTenant(
            pb.CreateTenantRequest(tenant=pb.Tenant(slug="nope-nope", display_name="x")),
            metadata=bearer(tenant.owner_key),
        )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # Every page: the session's other tests create more tenants than one page holds.
    listed: list[str] = []
    request = pb.ListTenantsRequest(page_size=200)
    while True:
        page = await tenants.ListTenants(request, metadata=bearer(stack.admin_token))
        listed += [t.id for t in page.tenants]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert tenant.id in listed


async def test_login_failures_look_the_same(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    attempts = [
        (tenant.slug, user.email, "wrong password!!"),
        (tenant.slug, "nobody@example.com", PASSWORD),
        ("no-such-tenant", user.email, PASSWORD),
    ]
    messages = set()
    for slug, email, password in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await tenants.Login(pb.LoginRequest(tenant_slug=slug, email=email, password=password))
        assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED
        messages.add(failed.value.details())
    assert len(messages) == 1


async def test_introspection_describes_credentials(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    active = await tenants.IntrospectCredential(
        pb.IntrospectCredentialRequest(credential=tenant.owner_key)
    )
    assert active.active
    assert active.principal.tenant_id == tenant.id
    assert list(active.principal.scopes) == [pb.API_KEY_SCOPE_OWNER]
    unknown = await tenants.IntrospectCredential(
        pb.IntrospectCredentialRequest(credential="pk_" + uuid.uuid4().hex)
    )
    assert not unknown.active
