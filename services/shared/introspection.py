"""Credential verification for services other than tenant: ask the tenant service,
and remember the answer briefly so hot paths do not pay a round trip per call.

A remembered answer lasts `ttl_s` (PODMESH_AUTH_CACHE_TTL_S) at most, and never past the
credential's own expiry: revocations, role changes and removed users reach every
service within `ttl_s`."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import grpc
from grpc import aio
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from services.shared.auth import Principal, PrincipalType, Role, Scope
from services.shared.errors import Unavailable
from services.shared.protobuf import instant

_ROLES = {
    tenant_pb2.ROLE_OWNER: Role.OWNER,
    tenant_pb2.ROLE_ADMIN: Role.ADMIN,
    tenant_pb2.ROLE_ANALYST: Role.ANALYST,
    tenant_pb2.ROLE_VIEWER: Role.VIEWER,
}
_SCOPES = {
    tenant_pb2.API_KEY_SCOPE_INGEST: Scope.INGEST,
    tenant_pb2.API_KEY_SCOPE_READ: Scope.READ,
    tenant_pb2.API_KEY_SCOPE_WRITE: Scope.WRITE,
    tenant_pb2.API_KEY_SCOPE_ADMIN: Scope.ADMIN,
    tenant_pb2.API_KEY_SCOPE_OWNER: Scope.OWNER,
}
_TYPES = {
    tenant_pb2.PRINCIPAL_TYPE_USER: PrincipalType.USER,
    tenant_pb2.PRINCIPAL_TYPE_API_KEY: PrincipalType.API_KEY,
    tenant_pb2.PRINCIPAL_TYPE_PLATFORM_ADMIN: PrincipalType.PLATFORM_ADMIN,
}
# Unknown keys are remembered only briefly, so a key created a moment ago works.
_NEGATIVE_TTL_S = 1.0
_MAX_ENTRIES = 10_000


def principal_from_proto(message: tenant_pb2.Principal) -> Principal:
    expires = instant(message, "expire_time")
    return Principal(
        type=_TYPES[message.type],
        tenant_id=uuid.UUID(message.tenant_id) if message.tenant_id else None,
        subject_id=message.subject_id,
        role=_ROLES.get(message.role),
        scopes=frozenset(_SCOPES[s] for s in message.scopes if s in _SCOPES),
        expires_at=expires,
    )


class RemoteApiKeyVerifier:
    """API keys and access tokens, as the tenant service's IntrospectCredential sees them."""

    def __init__(self, channel: aio.Channel, ttl_s: float) -> None:
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def verify_api_key(self, secret: str) -> Principal | None:
        return await self._introspect(secret)

    async def verify_user_token(self, token: str, claims: Principal) -> Principal | None:
        return await self._introspect(token)

    async def _introspect(self, credential: str) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(credential)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            # Waits out a tenant service that is restarting, within the deadline, rather
            # than refusing every caller while the channel reconnects.
            response = await self._stub.IntrospectCredential(
                tenant_pb2.IntrospectCredentialRequest(credential=credential),
                timeout=5,
                wait_for_ready=True,
            )
        except grpc.RpcError as error:
            raise Unavailable("the tenant service cannot verify credentials now") from error
        principal = (
            replace(
                principal_from_proto(response.principal), billing_warning=response.billing_warning
            )
            if response.active
            else None
        )
        ttl = self._ttl_s if principal is not None else _NEGATIVE_TTL_S
        if principal is not None and principal.expires_at is not None:
            remaining = (principal.expires_at - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                principal = None
            ttl = min(ttl, max(remaining, 0.0))
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[credential] = (now + ttl, principal)
        return principal
