"""Maps TenantService protobuf messages to directory calls and back; nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from services.shared.auth import CredentialVerifier, Principal, PrincipalType, Role, Scope
from services.shared.client_address import client_address
from services.shared.context import current_principal
from services.shared.protobuf import from_timestamp, instant, timestamp
from services.shared.validation import Violations, page_size, parse_uuid
from services.tenant.billing.rpc import BillingRpcs, quota_to_pb, status_to_pb
from services.tenant.billing.service import Billing
from services.tenant.directory import TenantDirectory
from services.tenant.domain import (
    ApiKey,
    ApiKeyState,
    AuditEvent,
    CountingWindow,
    Quota,
    Tenant,
    TenantSettings,
    TenantState,
    User,
    utcnow,
)

ROLE_TO_PB = {
    Role.OWNER: pb.ROLE_OWNER,
    Role.ADMIN: pb.ROLE_ADMIN,
    Role.ANALYST: pb.ROLE_ANALYST,
    Role.VIEWER: pb.ROLE_VIEWER,
}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
SCOPE_TO_PB = {
    Scope.INGEST: pb.API_KEY_SCOPE_INGEST,
    Scope.READ: pb.API_KEY_SCOPE_READ,
    Scope.WRITE: pb.API_KEY_SCOPE_WRITE,
    Scope.ADMIN: pb.API_KEY_SCOPE_ADMIN,
    Scope.OWNER: pb.API_KEY_SCOPE_OWNER,
}
SCOPE_FROM_PB = {v: k for k, v in SCOPE_TO_PB.items()}
KEY_STATE_TO_PB = {
    ApiKeyState.ACTIVE: pb.API_KEY_STATE_ACTIVE,
    ApiKeyState.REVOKED: pb.API_KEY_STATE_REVOKED,
    ApiKeyState.EXPIRED: pb.API_KEY_STATE_EXPIRED,
}
TENANT_STATE_TO_PB = {
    TenantState.ACTIVE: pb.TENANT_STATE_ACTIVE,
    TenantState.SUSPENDED: pb.TENANT_STATE_SUSPENDED,
}
WINDOW_TO_PB = {
    CountingWindow.UTC_DAY: pb.COUNTING_WINDOW_UTC_DAY,
    CountingWindow.TENANT_DAY: pb.COUNTING_WINDOW_TENANT_DAY,
    CountingWindow.ROLLING_24H: pb.COUNTING_WINDOW_ROLLING_24H,
}
WINDOW_FROM_PB = {v: k for k, v in WINDOW_TO_PB.items()}
PRINCIPAL_TYPE_TO_PB = {
    PrincipalType.USER: pb.PRINCIPAL_TYPE_USER,
    PrincipalType.API_KEY: pb.PRINCIPAL_TYPE_API_KEY,
    PrincipalType.PLATFORM_ADMIN: pb.PRINCIPAL_TYPE_PLATFORM_ADMIN,
}


# Records one AppendAuditEvents call may carry.
MAX_APPENDED_AUDIT_EVENTS = 500


def tenant_to_pb(tenant: Tenant) -> pb.Tenant:
    return pb.Tenant(
        id=str(tenant.id),
        slug=tenant.slug,
        display_name=tenant.display_name,
        state=TENANT_STATE_TO_PB[tenant.state],
        settings=pb.TenantSettings(
            time_zone=tenant.settings.time_zone,
            counting_window=WINDOW_TO_PB[tenant.settings.counting_window],
            attribution_window_days=tenant.settings.attribution_window_days,
        ),
        quota=pb.Quota(
            max_users=tenant.quota.max_users,
            max_api_keys=tenant.quota.max_api_keys,
            monthly_events=tenant.quota.monthly_events,
            api_key_requests_per_second=tenant.quota.api_key_requests_per_second,
        ),
        create_time=timestamp(tenant.created_at),
        update_time=timestamp(tenant.updated_at),
    )


def tenant_from_pb(message: pb.Tenant, *, id_field: str | None = None) -> Tenant:
    settings = message.settings
    # New tenants get their id from the directory; updates name theirs.
    tenant_id = parse_uuid(message.id, id_field) if id_field else uuid.UUID(int=0)
    return Tenant(
        id=tenant_id,
        slug=message.slug.strip(),
        display_name=message.display_name.strip(),
        settings=TenantSettings(
            time_zone=settings.time_zone or "UTC",
            counting_window=WINDOW_FROM_PB.get(settings.counting_window, CountingWindow.UTC_DAY),
            attribution_window_days=settings.attribution_window_days or 30,
        ),
        quota=Quota(
            max_users=message.quota.max_users,
            max_api_keys=message.quota.max_api_keys,
            monthly_events=message.quota.monthly_events,
            api_key_requests_per_second=message.quota.api_key_requests_per_second,
        ),
    )


def user_to_pb(user: User) -> pb.User:
    return pb.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        role=ROLE_TO_PB[user.role],
        create_time=timestamp(user.created_at),
        update_time=timestamp(user.updated_at),
        last_login_time=timestamp(user.last_login_at),
    )


def api_key_to_pb(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(key.id),
        display_name=key.display_name,
        scopes=sorted(SCOPE_TO_PB[s] for s in key.scopes),
        prefix=key.prefix,
        state=KEY_STATE_TO_PB[key.state(utcnow())],
        create_time=timestamp(key.created_at),
        last_use_time=timestamp(key.last_used_at),
        revoke_time=timestamp(key.revoked_at),
        expire_time=timestamp(key.expires_at),
    )


def audit_event_to_pb(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=str(event.id),
        event_time=timestamp(event.occurred_at),
        actor_type=event.actor_type,
        actor_id=event.actor_id,
        method=event.method,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        request_id=event.request_id,
        details=event.details,
    )


def principal_to_pb(principal: Principal) -> pb.Principal:
    return pb.Principal(
        tenant_id=str(principal.tenant_id) if principal.tenant_id else "",
        type=PRINCIPAL_TYPE_TO_PB[principal.type],
        subject_id=principal.subject_id,
        role=ROLE_TO_PB[principal.role] if principal.role else pb.ROLE_UNSPECIFIED,
        scopes=sorted(SCOPE_TO_PB[s] for s in principal.scopes),
        expire_time=timestamp(principal.expires_at),
    )


class TenantServicer(BillingRpcs, tenant_pb2_grpc.TenantServiceServicer):
    def __init__(
        self,
        directory: TenantDirectory,
        verifier: CredentialVerifier,
        billing: Billing,
        background: Sequence[object] = (),
    ) -> None:
        self._directory = directory
        self._verifier = verifier
        self._billing = billing
        # The service's background jobs live as long as the servicer the server holds.
        self._background = tuple(background)

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: Any
    ) -> pb.CreateTenantResponse:
        tenant, key, secret = await self._directory.create_tenant(
            current_principal(), tenant_from_pb(request.tenant), request.api_key_display_name
        )
        return pb.CreateTenantResponse(
            tenant=tenant_to_pb(tenant), api_key=api_key_to_pb(key), api_key_secret=secret
        )

    async def GetTenant(self, request: pb.GetTenantRequest, context: Any) -> pb.GetTenantResponse:
        tenant = await self._directory.get_tenant(
            current_principal(), parse_uuid(request.tenant_id, "tenant_id")
        )
        status = await self._billing.tenant_status(tenant)
        message = tenant_to_pb(tenant)
        message.effective_quota.CopyFrom(quota_to_pb(status.quota))
        message.billing.CopyFrom(status_to_pb(status))
        return pb.GetTenantResponse(tenant=message)

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: Any
    ) -> pb.ListTenantsResponse:
        tenants, token = await self._directory.list_tenants(
            page_size(request.page_size), request.page_token
        )
        return pb.ListTenantsResponse(
            tenants=[tenant_to_pb(t) for t in tenants], next_page_token=token
        )

    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, context: Any
    ) -> pb.UpdateTenantResponse:
        tenant = await self._directory.update_tenant(
            current_principal(),
            tenant_from_pb(request.tenant, id_field="tenant.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateTenantResponse(tenant=tenant_to_pb(tenant))

    async def CreateUser(
        self, request: pb.CreateUserRequest, context: Any
    ) -> pb.CreateUserResponse:
        user = await self._directory.create_user(
            current_principal(),
            request.user.email,
            request.user.display_name,
            ROLE_FROM_PB.get(request.user.role),
            request.password,
        )
        return pb.CreateUserResponse(user=user_to_pb(user))

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.GetUserResponse:
        user = await self._directory.get_user(
            current_principal(), parse_uuid(request.user_id, "user_id")
        )
        return pb.GetUserResponse(user=user_to_pb(user))

    async def ListUsers(self, request: pb.ListUsersRequest, context: Any) -> pb.ListUsersResponse:
        users, token = await self._directory.list_users(
            current_principal(), page_size(request.page_size), request.page_token
        )
        return pb.ListUsersResponse(users=[user_to_pb(u) for u in users], next_page_token=token)

    async def UpdateUser(
        self, request: pb.UpdateUserRequest, context: Any
    ) -> pb.UpdateUserResponse:
        patch = User(
            id=parse_uuid(request.user.id, "user.id"),
            email="",
            display_name=request.user.display_name,
            role=Role.VIEWER,
        )
        user = await self._directory.update_user(
            current_principal(),
            patch,
            list(request.update_mask.paths),
            ROLE_FROM_PB.get(request.user.role),
        )
        return pb.UpdateUserResponse(user=user_to_pb(user))

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: Any
    ) -> pb.DeleteUserResponse:
        await self._directory.delete_user(
            current_principal(), parse_uuid(request.user_id, "user_id")
        )
        return pb.DeleteUserResponse()

    async def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: Any
    ) -> pb.ChangePasswordResponse:
        token, expires = await self._directory.change_password(
            current_principal(),
            parse_uuid(request.user_id, "user_id"),
            request.current_password,
            request.new_password,
            client_address(context.invocation_metadata() or (), context.peer()),
        )
        return pb.ChangePasswordResponse(access_token=token, expire_time=timestamp(expires))

    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        token, expires, user = await self._directory.login(
            request.tenant_slug,
            request.email,
            request.password,
            client_address(context.invocation_metadata() or (), context.peer()),
        )
        return pb.LoginResponse(
            access_token=token,
            token_type="Bearer",
            expire_time=timestamp(expires),
            user=user_to_pb(user),
        )

    async def IntrospectCredential(
        self, request: pb.IntrospectCredentialRequest, context: Any
    ) -> pb.IntrospectCredentialResponse:
        principal = await self._directory.introspect(self._verifier, request.credential)
        if principal is None:
            return pb.IntrospectCredentialResponse(active=False)
        return pb.IntrospectCredentialResponse(
            active=True,
            principal=principal_to_pb(principal),
            billing_warning=principal.billing_warning,
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Any
    ) -> pb.CreateApiKeyResponse:
        expires = instant(request.api_key, "expire_time")
        key, secret = await self._directory.create_api_key(
            current_principal(),
            request.api_key.display_name,
            [SCOPE_FROM_PB.get(s) for s in request.api_key.scopes],
            expires,
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_pb(key), secret=secret)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Any) -> pb.GetApiKeyResponse:
        key = await self._directory.get_api_key(
            current_principal(), parse_uuid(request.api_key_id, "api_key_id")
        )
        return pb.GetApiKeyResponse(api_key=api_key_to_pb(key))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Any
    ) -> pb.ListApiKeysResponse:
        keys, token = await self._directory.list_api_keys(
            current_principal(),
            page_size(request.page_size),
            request.page_token,
            request.show_inactive,
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_to_pb(k) for k in keys], next_page_token=token
        )

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Any
    ) -> pb.RevokeApiKeyResponse:
        key = await self._directory.revoke_api_key(
            current_principal(), parse_uuid(request.api_key_id, "api_key_id")
        )
        return pb.RevokeApiKeyResponse(api_key=api_key_to_pb(key))

    async def IssueOwnerApiKey(
        self, request: pb.IssueOwnerApiKeyRequest, context: Any
    ) -> pb.IssueOwnerApiKeyResponse:
        key, secret = await self._directory.issue_owner_api_key(
            current_principal(),
            parse_uuid(request.tenant_id, "tenant_id"),
            request.api_key_display_name,
        )
        return pb.IssueOwnerApiKeyResponse(api_key=api_key_to_pb(key), secret=secret)

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        events, token = await self._directory.list_audit_events(
            current_principal(), page_size(request.page_size), request.page_token
        )
        return pb.ListAuditEventsResponse(
            audit_events=[audit_event_to_pb(e) for e in events], next_page_token=token
        )

    async def AppendAuditEvents(
        self, request: pb.AppendAuditEventsRequest, context: Any
    ) -> pb.AppendAuditEventsResponse:
        v = Violations()
        if len(request.audit_events) > MAX_APPENDED_AUDIT_EVENTS:
            v.add("audit_events", f"at most {MAX_APPENDED_AUDIT_EVENTS}")
        events = []
        for i, e in enumerate(request.audit_events):
            field = f"audit_events[{i}]"
            for name in ("actor_type", "method", "resource_type", "resource_id"):
                v.check(bool(getattr(e, name)), f"{field}.{name}", "is required")
            v.check(e.HasField("event_time"), f"{field}.event_time", "is required")
            try:
                event_id = uuid.UUID(e.id)
            except ValueError:
                v.add(f"{field}.id", "must be a UUID")
                continue
            events.append(
                AuditEvent(
                    id=event_id,
                    occurred_at=from_timestamp(e.event_time),
                    actor_type=e.actor_type,
                    actor_id=e.actor_id,
                    method=e.method,
                    resource_type=e.resource_type,
                    resource_id=e.resource_id,
                    request_id=e.request_id,
                    details=dict(e.details),
                )
            )
        v.raise_if_any()
        appended = await self._directory.append_audit_events(
            parse_uuid(request.tenant_id, "tenant_id"), events
        )
        return pb.AppendAuditEventsResponse(
            appended_count=appended, duplicate_count=len(events) - appended
        )
