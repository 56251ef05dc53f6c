"""One server interceptor for every service: request id, authentication,
authorisation from the declared permission table, strict input (services.shared.inputs),
error mapping, metrics, logs."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeAlias, cast

import grpc
from grpc import aio

from services.shared.auth import (
    BILLING_WARNING_HEADER,
    Access,
    CredentialOptional,
    CredentialVerifier,
    MethodRule,
    Permission,
    Principal,
    bearer_credential,
)
from services.shared.context import method_var, principal_var, request_id_var
from services.shared.errors import (
    DomainError,
    PermissionDenied,
    Unauthenticated,
    internal_status,
    to_status,
)
from services.shared.inputs import (
    DEFAULT_RULE,
    InputRule,
    InputRules,
    accept,
    accept_stream,
    guarded_deserializer,
)
from services.shared.telemetry import RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger("podmesh.rpc")

# The stubs make these generic, the runtime classes are not: hence the strings.
Context: TypeAlias = "aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# Served by every process without credentials: load balancers and operators need them.
_INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# A client's x-request-id is kept (it ties our logs and audit records to theirs) only
# when it looks like an id; anything else would be stored verbatim.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# How often a stream's credential is verified again while messages flow. The verifier's
# own cache (PODMESH_AUTH_CACHE_TTL_S) bounds how stale each answer may be, so a revoked
# credential ends its streams within that TTL plus this interval.
_STREAM_RECHECK_S = 1.0


def request_id(supplied: str | None) -> str:
    """The client's request id when it has a safe shape, else a new one."""
    if supplied and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


class RequestInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        service: str,
        rules: Mapping[str, MethodRule],
        verifier: CredentialVerifier,
        inputs: InputRules,
    ) -> None:
        self._service = service
        self._rules = rules
        self._verifier = verifier
        self._inputs = inputs
        # Wrapped once per method: the servicer's handlers never change.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_INFRASTRUCTURE_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(
            handler,
            functools.partial(self._enter, method),
            self,
            method,
            self._inputs.get(method, DEFAULT_RULE),
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _enter(self, method: str, context: Context) -> None:
        # grpc.aio runs every RPC in its own task, so these settings end with it.
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id_var.set(request_id(metadata.get("x-request-id")))
        method_var.set(method)
        rule = self._rules.get(method)
        if rule is None:
            # Fail closed: a method nobody declared a permission for is not callable.
            raise PermissionDenied(f"{method} has no declared permission", reason="UNDECLARED")
        if rule is Access.PUBLIC or _anonymous(rule, metadata):
            return
        principal = await self._principal(metadata)
        principal_var.set(principal)
        _authorise(rule, principal)
        if principal.billing_warning:
            # Headers, not trailers: JSON clients through the gateway see headers, and an
            # error's trailers belong to its status.
            await context.send_initial_metadata(
                ((BILLING_WARNING_HEADER, principal.billing_warning),)
            )

    async def recheck(self, method: str, context: Context) -> None:
        """Verifies a stream's credential again: a stream lives no longer than it."""
        rule = self._rules.get(method)
        if rule is None or rule is Access.PUBLIC:
            return
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if _anonymous(rule, metadata):
            return
        _authorise(rule, await self._principal(metadata))

    async def _principal(self, metadata: Mapping[str, str]) -> Principal:
        credential = _credential(metadata)
        if not credential:
            raise Unauthenticated(
                "missing credentials: send 'authorization: Bearer <api key or token>'",
                reason="CREDENTIALS_MISSING",
            )
        principal = await self._verifier.verify(credential)
        if principal is None:
            raise Unauthenticated(
                "the credential is unknown, revoked or expired", reason="CREDENTIALS_INVALID"
            )
        return principal

    def record(
        self, method: str, code: grpc.StatusCode, started: float, principal: Principal | None
    ) -> None:
        elapsed = time.perf_counter() - started
        short = method.rsplit("/", 1)[-1]
        RPC_REQUESTS.labels(self._service, short, code.name).inc()
        RPC_LATENCY.labels(self._service, short).observe(elapsed)
        fields: dict[str, Any] = {
            "method": method,
            "code": code.name,
            "duration_ms": round(elapsed * 1000, 2),
        }
        if principal is not None:
            fields["principal"] = principal.type.value
        log.info("rpc", extra={"fields": fields})


Enter = Callable[[Context], Awaitable[None]]


def _credential(metadata: Mapping[str, str]) -> str:
    return bearer_credential(metadata.get("authorization", "")) or metadata.get("x-api-key", "")


def _anonymous(rule: MethodRule, metadata: Mapping[str, str]) -> bool:
    """A call without any credential to a method that takes such calls: it runs with
    no principal. A call that sends one is checked like any other."""
    return isinstance(rule, CredentialOptional) and not _credential(metadata)


def _authorise(rule: MethodRule, principal: Principal) -> None:
    permission = rule.permission if isinstance(rule, CredentialOptional) else rule
    if isinstance(permission, Permission) and not principal.can(permission):
        raise PermissionDenied(
            f"this credential lacks the {permission.value!r} permission",
            reason="MISSING_PERMISSION",
            metadata={"permission": permission.value},
        )


class _StreamCredential:
    """Re-verifies a stream's credential at most every _STREAM_RECHECK_S, as requests
    arrive and responses leave; a failed check ends the stream with its error."""

    def __init__(self, check: Callable[[], Awaitable[None]]) -> None:
        self._check = check
        self._due = time.monotonic() + _STREAM_RECHECK_S

    async def still_valid(self) -> None:
        if time.monotonic() >= self._due:
            await self._check()
            self._due = time.monotonic() + _STREAM_RECHECK_S

    async def requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            await self.still_valid()
            yield request


async def _fail(context: Context, error: BaseException) -> grpc.StatusCode:
    if isinstance(error, DomainError):
        status = to_status(error)
    else:
        log.exception("unhandled error", exc_info=error)
        status = internal_status()
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _wrap(
    handler: Handler,
    enter: Enter,
    interceptor: RequestInterceptor,
    method: str,
    rule: InputRule,
) -> Handler:
    """The same handler, run inside the request scope with errors mapped and its
    input checked: requests arrive parsed by a guarded deserializer, then accepted."""

    def checked(request_or_iterator: Any) -> Any:
        if handler.request_streaming:
            return accept_stream(request_or_iterator, rule)
        return accept(request_or_iterator, rule)

    async def unary(request_or_iterator: Any, context: Context) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            await enter(context)
            behaviour: Any = handler.unary_unary or handler.stream_unary
            return await behaviour(checked(request_or_iterator), context)
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except DomainError as error:
            code = error.code
            await _fail(context, error)
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            await _fail(context, error)
        finally:
            interceptor.record(method, code, started, principal_var.get())

    async def streaming(request_or_iterator: Any, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            await enter(context)
            credential = _StreamCredential(functools.partial(interceptor.recheck, method, context))
            if handler.stream_stream:
                request_or_iterator = credential.requests(request_or_iterator)
            behaviour: Any = handler.unary_stream or handler.stream_stream
            async for response in behaviour(checked(request_or_iterator), context):
                await credential.still_valid()
                yield response
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except DomainError as error:
            code = error.code
            await _fail(context, error)
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            await _fail(context, error)
        finally:
            interceptor.record(method, code, started, principal_var.get())

    deserializer = guarded_deserializer(handler.request_deserializer, rule.max_bytes)
    serializer = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(cast(Any, unary), deserializer, serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(cast(Any, unary), deserializer, serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(cast(Any, streaming), deserializer, serializer)
    return grpc.stream_stream_rpc_method_handler(cast(Any, streaming), deserializer, serializer)
