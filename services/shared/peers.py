"""Calling another Podmesh service on a caller's behalf: the same metadata, and the
same reading of its errors, from every service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.shared.context import current_request_id
from services.shared.errors import (
    DomainError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

Metadata = Sequence[tuple[str, str]]
# Headers that carry a credential (see services.shared.interceptors).
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def credentials(context: Any) -> tuple[tuple[str, str], ...]:
    """The caller's credential from a servicer context, to forward to peers so they act
    for the caller."""
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key in CREDENTIAL_HEADERS and isinstance(value, str)
    )


def forwarded(credentials: Metadata) -> tuple[tuple[str, str], ...]:
    """The caller's credentials plus this request's id, so logs join up across services."""
    return (*credentials, ("x-request-id", current_request_id()))


def peer_error(
    error: grpc.aio.AioRpcError, peer: str, *, not_found: tuple[str, str] | None = None
) -> DomainError:
    """What a failed call to `peer` means for our caller. `not_found` names the resource
    (type, id) when the peer's NOT_FOUND is the caller's NOT_FOUND."""
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND and not_found is not None:
        return NotFound(*not_found)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"the {peer} service refused the credential: {error.details()}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            f"the {peer} service refused this credential: {error.details()}",
            reason=f"{peer.upper()}_ACCESS_DENIED",
        )
    return Unavailable(f"the {peer} service cannot answer now ({code.name}); send again later")
