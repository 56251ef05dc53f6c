"""Per-request context: the request id and the authenticated principal."""

from __future__ import annotations

from contextvars import ContextVar

from services.shared.auth import Principal
from services.shared.errors import Unauthenticated

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)
# The full gRPC method, e.g. "/podmesh.tenant.v1.TenantService/RevokeApiKey", for audit records.
method_var: ContextVar[str] = ContextVar("method", default="")


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("this method needs credentials")
    return principal


def current_request_id() -> str:
    return request_id_var.get()


def current_method() -> str:
    return method_var.get().lstrip("/")
