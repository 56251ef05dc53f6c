"""The SDK retries a call only when it is a GET-mapped read and the failure is
UNAVAILABLE; anything else is answered after one attempt."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from podmesh_sdk.client import RetryPolicy, _AsyncUnaryUnary

FAST = RetryPolicy(attempts=4, base_s=0.0, cap_s=0.0)


class FakeCall:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def __await__(self) -> Any:
        if self.code != grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(
                self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", ""
            )
        return "response"
        yield


def continuation_failing(times: int, code: grpc.StatusCode) -> tuple[list[Any], Any]:
    seen: list[Any] = []

    async def continuation(details: grpc.aio.ClientCallDetails, request: object) -> FakeCall:
        seen.append(details)
        return FakeCall(code if len(seen) <= times else grpc.StatusCode.OK)

    return seen, continuation


def details(method: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(method, None, None, None, None)


@pytest.mark.parametrize(
    ("method", "code", "attempts"),
    [
        ("/podmesh.analytics.v1.AnalyticsService/QueryMetrics", grpc.StatusCode.UNAVAILABLE, 3),
        ("/podmesh.analytics.v1.AnalyticsService/QueryMetrics", grpc.StatusCode.NOT_FOUND, 1),
        ("/podmesh.tenant.v1.TenantService/CreateTenant", grpc.StatusCode.UNAVAILABLE, 1),
    ],
)
async def test_retries_only_idempotent_unavailable(
    method: str, code: grpc.StatusCode, attempts: int
) -> None:
    seen, continuation = continuation_failing(2, code)
    interceptor = _AsyncUnaryUnary("pk_test", FAST)
    await interceptor.intercept_unary_unary(continuation, details(method), object())
    assert len(seen) == attempts
    assert ("authorization", "Bearer pk_test") in list(seen[0].metadata)
