"""Typed clients of the five services, async (grpc.aio) and sync, over the gateway.

Each service is its generated stub, so every method and message is typed by the stubs
themselves. An interceptor adds the credential to every call and retries, with
exponential backoff and jitter, only calls that are safe to repeat: the methods the
contract maps to HTTP GET (the same rule the gateway retries by), and only on
UNAVAILABLE. Writes are never retried here: a write that timed out may have happened.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from podmesh.attribution.v1 import attribution_pb2, attribution_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2, campaign_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from podmesh_sdk.config import Credentials
from podmesh_sdk.ingest import IngestClient

# The stubs make interceptors generic; at run time they are plain classes.
if TYPE_CHECKING:
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _SyncStreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor
    _SyncStreamStream = grpc.StreamStreamClientInterceptor

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
_FILES = (tenant_pb2, catalog_pb2, campaign_pb2, attribution_pb2, analytics_pb2)


def idempotent_methods() -> frozenset[str]:
    """Full method names (/package.Service/Method) the contract maps to HTTP GET."""
    names: set[str] = set()
    for module in _FILES:
        file: descriptor.FileDescriptor = module.DESCRIPTOR
        for service in file.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                if rule.get:
                    names.add(f"/{service.full_name}/{method.name}")
    return frozenset(names)


IDEMPOTENT = idempotent_methods()


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts in all (1 = no retry) and the backoff: base x 2^n, at most `cap`."""

    attempts: int = 4
    base_s: float = 0.1
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        # Full jitter: clients retrying after one outage do not return in step.
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


def _metadata(existing: Any, credential: str) -> list[tuple[str, str | bytes]]:
    items: list[tuple[str, str | bytes]] = list(existing or ())
    if credential and not any(key == "authorization" for key, _ in items):
        items.append(("authorization", f"Bearer {credential}"))
    return items


class _AsyncAuthBase:
    def __init__(self, credential: str, retry: RetryPolicy) -> None:
        self._credential = credential
        self._retry = retry

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*_metadata(details.metadata, self._credential)),
            details.credentials,
            details.wait_for_ready,
        )


# One class per kind of call: grpc.aio files an interceptor under the first kind it
# implements only.
class _AsyncUnaryUnary(_AsyncAuthBase, _AioUnaryUnary):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        details = self._details(client_call_details)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        attempts = self._retry.attempts if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            call = await continuation(details, request)
            if attempt == attempts - 1:
                return call
            try:
                await call
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    return call
                await asyncio.sleep(self._retry.delay(attempt))
                continue
            return call
        raise AssertionError("unreachable: the last attempt returns its call")


class _AsyncUnaryStream(_AsyncAuthBase, _AioUnaryStream):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AsyncStreamUnary(_AsyncAuthBase, _AioStreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncStreamStream(_AsyncAuthBase, _AioStreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def _async_interceptors(credential: str, retry: RetryPolicy) -> list[_AsyncAuthBase]:
    return [
        kind(credential, retry)
        for kind in (_AsyncUnaryUnary, _AsyncUnaryStream, _AsyncStreamUnary, _AsyncStreamStream)
    ]


@dataclass(frozen=True)
class _SyncDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _SyncAuth(
    _SyncUnaryUnary,
    _SyncUnaryStream,
    _SyncStreamUnary,
    _SyncStreamStream,
):
    def __init__(self, credential: str, retry: RetryPolicy) -> None:
        self._credential = credential
        self._retry = retry

    def _details(self, details: Any) -> _SyncDetails:
        return _SyncDetails(
            details.method,
            details.timeout,
            _metadata(details.metadata, self._credential),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        details = self._details(client_call_details)
        attempts = self._retry.attempts if details.method in IDEMPOTENT else 1
        for attempt in range(attempts):
            outcome = continuation(details, request)
            failed = outcome.exception() if hasattr(outcome, "exception") else None
            if (
                attempt == attempts - 1
                or failed is None
                or not isinstance(failed, grpc.Call)
                or failed.code() not in RETRYABLE
            ):
                return outcome
            time.sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns its outcome")

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


# Keepalive lets a long ingestion notice a dead gateway; the limits match the gateway's.
_OPTIONS = (
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)


class Client:
    """Async clients of every service through the gateway. Use as `async with`.

    `client.tenant`, `.catalog`, `.campaign`, `.attribution`, `.analytics` are the
    generated async stubs; the credential is added to each call.
    """

    def __init__(
        self, credentials: Credentials | None = None, *, retry: RetryPolicy | None = None
    ) -> None:
        self.credentials = credentials or Credentials.load()
        # grpc-stubs types `interceptors` as a placeholder to cast to.
        interceptors: Any = _async_interceptors(self.credentials.api_key, retry or RetryPolicy())
        if self.credentials.secure:
            self.channel = grpc.aio.secure_channel(
                self.credentials.target,
                grpc.ssl_channel_credentials(),
                options=_OPTIONS,
                interceptors=interceptors,
            )
        else:
            self.channel = grpc.aio.insecure_channel(
                self.credentials.target, options=_OPTIONS, interceptors=interceptors
            )
        self.tenant: tenant_pb2_grpc.TenantServiceAsyncStub = tenant_pb2_grpc.TenantServiceStub(
            self.channel
        )
        self.catalog: catalog_pb2_grpc.CatalogServiceAsyncStub = (
            catalog_pb2_grpc.CatalogServiceStub(self.channel)
        )
        self.campaign: campaign_pb2_grpc.CampaignServiceAsyncStub = (
            campaign_pb2_grpc.CampaignServiceStub(self.channel)
        )
        self.attribution: attribution_pb2_grpc.AttributionServiceAsyncStub = (
            attribution_pb2_grpc.AttributionServiceStub(self.channel)
        )
        self.analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub = (
            analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        )

    def ingestion(self, *, in_flight: int = 4, max_reconnects: int = 100) -> IngestClient:
        """The resending windowed ingestion client on this client's channel."""
        return IngestClient(self.analytics, in_flight=in_flight, max_reconnects=max_reconnects)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncClient:
    """Blocking clients of every service through the gateway. Use as `with`."""

    def __init__(
        self, credentials: Credentials | None = None, *, retry: RetryPolicy | None = None
    ) -> None:
        self.credentials = credentials or Credentials.load()
        if self.credentials.secure:
            raw = grpc.secure_channel(
                self.credentials.target, grpc.ssl_channel_credentials(), options=_OPTIONS
            )
        else:
            raw = grpc.insecure_channel(self.credentials.target, options=_OPTIONS)
        self._raw = raw
        self.channel = grpc.intercept_channel(
            raw, _SyncAuth(self.credentials.api_key, retry or RetryPolicy())
        )
        self.tenant: tenant_pb2_grpc.TenantServiceStub = tenant_pb2_grpc.TenantServiceStub(
            self.channel
        )
        self.catalog: catalog_pb2_grpc.CatalogServiceStub = catalog_pb2_grpc.CatalogServiceStub(
            self.channel
        )
        self.campaign: campaign_pb2_grpc.CampaignServiceStub = (
            campaign_pb2_grpc.CampaignServiceStub(self.channel)
        )
        self.attribution: attribution_pb2_grpc.AttributionServiceStub = (
            attribution_pb2_grpc.AttributionServiceStub(self.channel)
        )
        self.analytics: analytics_pb2_grpc.AnalyticsServiceStub = (
            analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Paged(Protocol):
    page_token: str


RequestT = TypeVar("RequestT", bound=_Paged)
ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")


def _next_token(response: Any) -> str:
    return str(response.next_page_token)


async def pages(
    method: Callable[[RequestT], Awaitable[ResponseT]],
    request: RequestT,
    items: Callable[[ResponseT], Iterable[ItemT]],
) -> AsyncIterator[ItemT]:
    """Every item of a List method, page after page:
    `async for p in pages(c.catalog.ListPodcasts, ListPodcastsRequest(), lambda r: r.podcasts)`.
    """
    while True:
        response = await method(request)
        for item in items(response):
            yield item
        token = _next_token(response)
        if not token:
            return
        request.page_token = token


def sync_pages(
    method: Callable[[RequestT], ResponseT],
    request: RequestT,
    items: Callable[[ResponseT], Iterable[ItemT]],
) -> Iterator[ItemT]:
    """The blocking twin of `pages`."""
    while True:
        response = method(request)
        yield from items(response)
        token = _next_token(response)
        if not token:
            return
        request.page_token = token
