"""The tenant service's trust boundaries: tokens follow their user, cached credentials
expire, owners cannot be locked out, sign-in resists guessing, owner changes never race."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from podmesh.catalog.v1 import catalog_pb2
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.shared.config import Settings
from services.shared.introspection import RemoteApiKeyVerifier
from tests.integration.conftest import CatalogStub
from tests.support import (
    PASSWORD,
    Metadata,
    TenantHandle,
    bearer,
    create_tenant,
    create_user,
    error_info,
    login,
    rich_status,
    violated_fields,
)

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"

# Other services may trust a cached verification this long (the default setting).
CACHE_TTL_S = Settings().auth_cache_ttl_s
# How long to wait for a revocation to reach another service: the cache bound plus slack
# for a loaded machine. Never a timing assertion: the test polls until it sees the effect.
PROPAGATION_BOUND_S = CACHE_TTL_S + 30


def client_address() -> Metadata:
    """A client address of the test's own, so its failed sign-ins slow nobody else down."""
    value = uuid.uuid4().int
    return (("x-forwarded-for", f"10.{value % 250}.{(value >> 8) % 250}.{(value >> 16) % 250}"),)


async def poll_until_refused(call: Callable[[], Awaitable[object]]) -> grpc.aio.AioRpcError:
    deadline = time.monotonic() + PROPAGATION_BOUND_S
    while True:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            return error
        if time.monotonic() > deadline:
            raise AssertionError(f"still accepted {PROPAGATION_BOUND_S}s after the change")
        await asyncio.sleep(0.25)


async def demote(stub: Stub, credential: str, user_id: str, role: pb.Role) -> pb.User:
    response = await stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=user_id, role=role), update_mask=FieldMask(paths=["role"])
        ),
        metadata=bearer(credential),
    )
    return response.user


async def admin_token_of(tenants: Stub, tenant: TenantHandle) -> tuple[pb.User, str]:
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_ADMIN)
    response = await tenants.Login(
        pb.LoginRequest(tenant_slug=tenant.slug, email=user.email, password=PASSWORD),
        metadata=client_address(),
    )
    return user, response.access_token


def admin_key_request() -> pb.CreateApiKeyRequest:
    return pb.CreateApiKeyRequest(
        api_key=pb.ApiKey(display_name="escalated", scopes=[pb.API_KEY_SCOPE_ADMIN])
    )


# 1. Tokens follow their user


async def test_a_demoted_admins_token_stops_working(
    tenants: Stub, catalog: CatalogStub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    admin, token = await admin_token_of(tenants, tenant)
    await tenants.CreateApiKey(admin_key_request(), metadata=bearer(token))
    await catalog.ListPodcasts(catalog_pb2.ListPodcastsRequest(), metadata=bearer(token))

    await demote(tenants, tenant.owner_key, admin.id, pb.ROLE_VIEWER)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.CreateApiKey(admin_key_request(), metadata=bearer(token))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as no_user:
        await tenants.CreateUser(
            pb.CreateUserRequest(
                user=pb.User(email="new-admin@example.com", role=pb.ROLE_ADMIN), password=PASSWORD
            ),
            metadata=bearer(token),
        )
    assert no_user.value.code() is grpc.StatusCode.UNAUTHENTICATED
    looked_up = await tenants.IntrospectCredential(pb.IntrospectCredentialRequest(credential=token))
    assert not looked_up.active

    elsewhere = await poll_until_refused(
        lambda: catalog.ListPodcasts(catalog_pb2.ListPodcastsRequest(), metadata=bearer(token))
    )
    assert elsewhere.code() is grpc.StatusCode.UNAUTHENTICATED

    # Signing in again gives a token with the new role.
    fresh = await login(tenants, tenant.slug, admin.email)
    with pytest.raises(grpc.aio.AioRpcError) as viewer:
        await tenants.CreateApiKey(admin_key_request(), metadata=bearer(fresh))
    assert viewer.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_deleted_users_token_stops_working(
    tenants: Stub, catalog: CatalogStub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    admin, token = await admin_token_of(tenants, tenant)
    await catalog.ListPodcasts(catalog_pb2.ListPodcastsRequest(), metadata=bearer(token))

    await tenants.DeleteUser(
        pb.DeleteUserRequest(user_id=admin.id), metadata=bearer(tenant.owner_key)
    )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.CreateApiKey(admin_key_request(), metadata=bearer(token))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_info(refused.value).reason == "CREDENTIALS_INVALID"
    looked_up = await tenants.IntrospectCredential(pb.IntrospectCredentialRequest(credential=token))
    assert not looked_up.active
    elsewhere = await poll_until_refused(
        lambda: catalog.ListPodcasts(catalog_pb2.ListPodcastsRequest(), metadata=bearer(token))
    )
    assert elsewhere.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_renamed_users_token_keeps_working(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    admin, token = await admin_token_of(tenants, tenant)
    await tenants.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=admin.id, display_name="Renamed"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(tenant.owner_key),
    )
    got = await tenants.GetUser(pb.GetUserRequest(user_id=admin.id), metadata=bearer(token))
    assert got.user.display_name == "Renamed"


# 2. Cached verifications end with the credential


async def test_a_cached_api_key_does_not_outlive_its_expiry(
    tenant_channel: grpc.aio.Channel, tenants: Stub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    expires = datetime.now(UTC) + timedelta(seconds=3)
    stamp = Timestamp()
    stamp.FromDatetime(expires)
    created = await tenants.CreateApiKey(
        pb.CreateApiKeyRequest(
            api_key=pb.ApiKey(
                display_name="short-lived", scopes=[pb.API_KEY_SCOPE_READ], expire_time=stamp
            )
        ),
        metadata=bearer(tenant.owner_key),
    )
    # A cache far longer than the key's life.
    verifier = RemoteApiKeyVerifier(tenant_channel, ttl_s=3600)
    assert await verifier.verify_api_key(created.secret) is not None

    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    assert await verifier.verify_api_key(created.secret) is None


# 4. Owners cannot be locked out


async def test_an_admin_cannot_revoke_the_owner_key(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    _, token = await admin_token_of(tenants, tenant)
    owner_key_id = (
        (await tenants.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(tenant.owner_key)))
        .api_keys[0]
        .id
    )
    admin_key = await tenants.CreateApiKey(admin_key_request(), metadata=bearer(token))

    for credential in (token, admin_key.secret):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await tenants.RevokeApiKey(
                pb.RevokeApiKeyRequest(api_key_id=owner_key_id), metadata=bearer(credential)
            )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_info(denied.value).reason == "OWNER_PROTECTED"
    # The owner key still works.
    await tenants.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )


async def test_the_last_owner_credential_cannot_be_revoked(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    owner_key_id = (
        (await tenants.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(tenant.owner_key)))
        .api_keys[0]
        .id
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.RevokeApiKey(
            pb.RevokeApiKeyRequest(api_key_id=owner_key_id), metadata=bearer(tenant.owner_key)
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "LAST_OWNER_CREDENTIAL"

    # With an owner user, the key may go.
    owner = await create_user(tenants, tenant.owner_key, pb.ROLE_OWNER)
    token = await login(tenants, tenant.slug, owner.email)
    revoked = await tenants.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=owner_key_id), metadata=bearer(token)
    )
    assert revoked.api_key.state == pb.API_KEY_STATE_REVOKED


async def test_the_platform_administrator_issues_a_new_owner_key(
    tenants: Stub, http: httpx.AsyncClient, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    with pytest.raises(grpc.aio.AioRpcError) as members_cannot:
        await tenants.IssueOwnerApiKey(
            pb.IssueOwnerApiKeyRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
        )
    assert members_cannot.value.code() is grpc.StatusCode.PERMISSION_DENIED

    issued = await tenants.IssueOwnerApiKey(
        pb.IssueOwnerApiKeyRequest(tenant_id=tenant.id, api_key_display_name="Recovery"),
        metadata=bearer(stack.admin_token),
    )
    assert list(issued.api_key.scopes) == [pb.API_KEY_SCOPE_OWNER]
    assert issued.api_key.display_name == "Recovery"
    got = await tenants.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(issued.secret)
    )
    assert got.tenant.id == tenant.id

    # With two owner keys, the first may now be revoked, by the new one.
    first_id = next(
        k.id
        for k in (
            await tenants.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(issued.secret))
        ).api_keys
        if k.id != issued.api_key.id
    )
    await tenants.RevokeApiKey(
        pb.RevokeApiKeyRequest(api_key_id=first_id), metadata=bearer(issued.secret)
    )
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(issued.secret)
    )
    issue_events = [e for e in audit.audit_events if e.method.endswith("/IssueOwnerApiKey")]
    assert len(issue_events) == 1
    assert issue_events[0].actor_type == "platform_admin"
    assert issue_events[0].resource_id == issued.api_key.id

    # The same through the JSON gateway.
    as_json = await http.post(
        f"/api/v1/tenants/{tenant.id}:issueOwnerApiKey",
        json={},
        headers={"authorization": f"Bearer {stack.admin_token}"},
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["secret"].startswith("pk_")
    unknown = await http.post(
        f"/api/v1/tenants/{uuid.uuid4()}:issueOwnerApiKey",
        json={},
        headers={"authorization": f"Bearer {stack.admin_token}"},
    )
    assert unknown.status_code == 404


# 5. Sign-in resists guessing


async def _sign_in(
    tenants: Stub, slug: str, email: str, password: str, address: Metadata
) -> grpc.StatusCode:
    """How a sign-in ends; a throttled one must say when to try again (RetryInfo)."""
    try:
        await tenants.Login(
            pb.LoginRequest(tenant_slug=slug, email=email, password=password), metadata=address
        )
    except grpc.aio.AioRpcError as error:
        retry = error_details_pb2.RetryInfo()
        told_when = any(d.Unpack(retry) for d in rich_status(error).details)
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and not (
            told_when and retry.retry_delay.ToTimedelta() > timedelta(0)
        ):
            return grpc.StatusCode.UNKNOWN
        return error.code()
    return grpc.StatusCode.OK


async def test_password_guessing_is_slowed_down_per_account(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    codes = []
    for attempt in range(30):
        # A new address for every guess: the account's own limit must hold.
        codes.append(
            await _sign_in(
                tenants, tenant.slug, user.email, f"guess {attempt:04d}!!", client_address()
            )
        )
        if codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
    assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, codes
    assert set(codes[:-1]) == {grpc.StatusCode.UNAUTHENTICATED}
    # While the account is held back even the right password waits.
    held = await _sign_in(tenants, tenant.slug, user.email, PASSWORD, client_address())
    assert held is grpc.StatusCode.RESOURCE_EXHAUSTED

    # Another account of the tenant is not affected.
    other = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    assert (
        await _sign_in(tenants, tenant.slug, other.email, PASSWORD, client_address())
        is grpc.StatusCode.OK
    )


async def test_password_guessing_is_slowed_down_per_address(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    address = client_address()
    codes = []
    for attempt in range(60):
        # A different account every time: the address's own limit must hold.
        codes.append(
            await _sign_in(tenants, tenant.slug, f"u{attempt}@example.com", PASSWORD, address)
        )
        if codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
    assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, codes
    assert set(codes[:-1]) == {grpc.StatusCode.UNAUTHENTICATED}
    assert await _sign_in(tenants, tenant.slug, user.email, PASSWORD, address) is (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert (
        await _sign_in(tenants, tenant.slug, user.email, PASSWORD, client_address())
        is grpc.StatusCode.OK
    )


async def test_failed_sign_ins_are_audited_without_the_password(
    tenants: Stub, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    address = client_address()
    wrong = "not the password " + uuid.uuid4().hex
    assert (
        await _sign_in(tenants, tenant.slug, user.email, wrong, address)
        is grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        await _sign_in(tenants, tenant.slug, "nobody@example.com", wrong, address)
        is grpc.StatusCode.UNAUTHENTICATED
    )
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(tenant.owner_key)
    )
    failures = [e for e in audit.audit_events if e.method.endswith("/Login")]
    assert [(e.details["email"], e.details["reason"]) for e in failures] == [
        ("nobody@example.com", "UNKNOWN_USER"),
        (user.email, "WRONG_PASSWORD"),
    ]
    assert failures[1].resource_id == user.id
    assert failures[0].details["client_address"] == address[0][1]
    for event in failures:
        assert all(wrong not in value for value in event.details.values())


async def test_an_overlong_password_is_refused_before_hashing(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.Login(
            pb.LoginRequest(tenant_slug=tenant.slug, email="a@example.com", password="x" * 5000),
            metadata=client_address(),
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused.value) == ["password"]


# 6. Passwords are more than whitespace


@pytest.mark.parametrize("password", [" " * 12, "\t \n" * 6, "  short pw  "])
async def test_whitespace_does_not_make_a_password(
    tenants: Stub, stack: Stack, password: str
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.CreateUser(
            pb.CreateUserRequest(
                user=pb.User(email="spaces@example.com", role=pb.ROLE_VIEWER), password=password
            ),
            metadata=bearer(tenant.owner_key),
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused.value) == ["password"]


async def test_surrounding_whitespace_is_kept_as_typed(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    padded = "  " + PASSWORD + " "
    await tenants.CreateUser(
        pb.CreateUserRequest(
            user=pb.User(email="padded@example.com", role=pb.ROLE_VIEWER), password=padded
        ),
        metadata=bearer(tenant.owner_key),
    )
    address = client_address()
    assert (
        await _sign_in(tenants, tenant.slug, "padded@example.com", PASSWORD, address)
        is grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        await _sign_in(tenants, tenant.slug, "padded@example.com", padded, address)
        is grpc.StatusCode.OK
    )


async def test_changing_a_password_ends_older_tokens(tenants: Stub, stack: Stack) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_ADMIN)
    other = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    token = await login(tenants, tenant.slug, user.email)
    new_password = "a much better passphrase"

    def change(user_id: str, current: str, new: str) -> pb.ChangePasswordRequest:
        return pb.ChangePasswordRequest(user_id=user_id, current_password=current, new_password=new)

    refusals = [
        (token, change(user.id, "not it at all", new_password), "INVALID_ARGUMENT"),
        (token, change(user.id, PASSWORD, " " * 16), "INVALID_ARGUMENT"),
        (token, change(other.id, PASSWORD, new_password), "PERMISSION_DENIED"),
        (tenant.owner_key, change(user.id, PASSWORD, new_password), "PERMISSION_DENIED"),
    ]
    for credential, request, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tenants.ChangePassword(request, metadata=(*bearer(credential), *client_address()))
        assert refused.value.code().name == code
    changed = await tenants.ChangePassword(
        change(user.id, PASSWORD, new_password), metadata=(*bearer(token), *client_address())
    )

    with pytest.raises(grpc.aio.AioRpcError) as old_token:
        await tenants.GetUser(pb.GetUserRequest(user_id=user.id), metadata=bearer(token))
    assert old_token.value.code() is grpc.StatusCode.UNAUTHENTICATED
    await tenants.GetUser(pb.GetUserRequest(user_id=user.id), metadata=bearer(changed.access_token))
    address = client_address()
    assert (
        await _sign_in(tenants, tenant.slug, user.email, PASSWORD, address)
        is grpc.StatusCode.UNAUTHENTICATED
    )
    assert (
        await _sign_in(tenants, tenant.slug, user.email, new_password, address)
        is grpc.StatusCode.OK
    )
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(tenant.owner_key)
    )
    changes = [e for e in audit.audit_events if e.method.endswith("/ChangePassword")]
    assert [e.details.get("reason", "") for e in changes] == ["", "WRONG_PASSWORD"]
    assert all(
        new_password not in v and PASSWORD not in v for e in changes for v in e.details.values()
    )


# 7. Concurrent owner changes


async def test_concurrent_owner_demotions_keep_one_owner(tenants: Stub, stack: Stack) -> None:
    for _ in range(10):
        tenant = await create_tenant(tenants, stack.admin_token)
        first = await create_user(tenants, tenant.owner_key, pb.ROLE_OWNER)
        second = await create_user(tenants, tenant.owner_key, pb.ROLE_OWNER)
        results = await asyncio.gather(
            demote(tenants, tenant.owner_key, first.id, pb.ROLE_ADMIN),
            demote(tenants, tenant.owner_key, second.id, pb.ROLE_ADMIN),
            return_exceptions=True,
        )
        codes = sorted(
            r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results
        )
        assert codes == ["FAILED_PRECONDITION", "OK"], results
        users = await tenants.ListUsers(pb.ListUsersRequest(), metadata=bearer(tenant.owner_key))
        assert [u.role for u in users.users].count(pb.ROLE_OWNER) == 1


async def test_a_client_cannot_choose_its_address_through_the_gateway(
    tenants: Stub, http: httpx.AsyncClient, stack: Stack
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token)
    user = await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    failed = await http.post(
        "/api/v1/auth:login",
        json={"tenantSlug": tenant.slug, "email": user.email, "password": "wrong password!"},
        headers={"x-forwarded-for": "203.0.113.50"},
    )
    assert failed.status_code == 401
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(tenant.owner_key)
    )
    (event,) = [e for e in audit.audit_events if e.method.endswith("/Login")]
    # Envoy appends the address it accepted the connection from (for a loopback client,
    # its own address), and only that last entry counts.
    assert event.details["client_address"] != "203.0.113.50"
    assert ipaddress.ip_address(event.details["client_address"])
