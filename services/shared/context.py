"""Per-request context: the request id and the authenticated principal."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

from services.shared.auth import Principal
from services.shared.errors import FailedPrecondition, Unauthenticated

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)
# The full gRPC method, e.g. "/podmesh.tenant.v1.TenantService/RevokeApiKey", for audit records.
method_var: ContextVar[str] = ContextVar("method", default="")


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("this method needs credentials")
    return principal


def current_tenant_id() -> uuid.UUID:
    """The tenant the caller acts in, for services whose data always belongs to one."""
    return tenant_of(current_principal())


def tenant_of(principal: Principal) -> uuid.UUID:
    if principal.tenant_id is None:
        raise FailedPrecondition(
            "the platform administrator acts on tenants, not inside one: use a tenant's key",
            reason="TENANT_REQUIRED",
        )
    return principal.tenant_id


def current_request_id() -> str:
    return request_id_var.get()


def current_method() -> str:
    return method_var.get().lstrip("/")
