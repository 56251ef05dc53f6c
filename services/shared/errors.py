"""Domain errors, and their one mapping to gRPC status with google.rpc details (AIP-193)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "podmesh.dev"

# Details travel in HTTP/2 trailers, which Envoy refuses past its header limits (the
# client then sees 502 instead of the error): a status stays within a few KB whatever
# the request held. Violations beyond the first few add nothing a client acts on.
MAX_VIOLATIONS_SHOWN = 20
MAX_MESSAGE_CHARS = 1024
MAX_FIELD_CHARS = 200
MAX_DESCRIPTION_CHARS = 300
MAX_METADATA_CHARS = 256


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = "INVALID_FIELD"


class DomainError(Exception):
    """An error a caller can act on. `reason` is UPPER_SNAKE and stable."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation],
        message: str | None = None,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.violations = list(violations)
        shown = self.violations[:MAX_VIOLATIONS_SHOWN]
        more = len(self.violations) - len(shown)
        fields = ", ".join(v.field for v in shown) + (f" and {more} more" if more else "")
        summary = "; ".join(f"{v.field}: {v.description}" for v in shown)
        if more:
            summary += f"; and {more} more"
        super().__init__(
            message or f"invalid request: {summary}",
            reason=reason,
            metadata={**({"fields": fields} if shown else {}), **(metadata or {})},
        )

    @classmethod
    def field(cls, name: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(name, description)], reason=reason)


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(
            f"{resource_type} {resource_id!r} not found",
            reason=f"{_snake(resource_type)}_NOT_FOUND",
            metadata={"resource_type": resource_type, "resource_id": resource_id},
        )


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        # Sent as google.rpc.RetryInfo: when trying again can succeed.
        self.retry_delay_s = retry_delay_s


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A concurrency conflict the whole request may be retried after."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


def _snake(name: str) -> str:
    out = [("_" + c) if c.isupper() and i else c for i, c in enumerate(name)]
    return "".join(out).upper().replace(" ", "_")


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _shown_violations(
    violations: list[FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The first violations, then one (for the request as a whole) counting the rest."""
    shown = [
        error_details_pb2.BadRequest.FieldViolation(
            field=_cap(v.field, MAX_FIELD_CHARS),
            description=_cap(v.description, MAX_DESCRIPTION_CHARS),
            reason=v.reason,
        )
        for v in violations[:MAX_VIOLATIONS_SHOWN]
    ]
    more = len(violations) - len(shown)
    if more:
        shown.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="",
                description=f"{more} more violations not shown",
                reason="MORE_VIOLATIONS",
            )
        )
    return shown


def to_status(error: DomainError) -> grpc.Status:
    """The only place a domain error becomes a gRPC status."""
    metadata = {key: _cap(value, MAX_METADATA_CHARS) for key, value in error.metadata.items()}
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    ]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(field_violations=_shown_violations(error.violations))
            )
        )
    if isinstance(error, ResourceExhausted) and error.retry_delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1, round(error.retry_delay_s * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=error.code.value[0], message=_cap(error.message, MAX_MESSAGE_CHARS), details=details
    )
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="internal error",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
    )
    return rpc_status.to_status(status)
