"""Billing reads the events it meters from the analytics service (GetIngestUsage),
never from analytics' tables: with analytics down, usage is UNAVAILABLE rather than
guessed, rows recorded before are still reported, and the rest follow once it is back."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.localstripe import LocalStripe
from devstack.stack import Stack
from tests.analytics_ingest_support import HOUR_US, ingest_tenant, listener_traffic, now_us
from tests.billing_support import CARD, request_id, stripe_get
from tests.support import bearer

Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


async def _stripe_events(localstripe: LocalStripe, tenant_id: str) -> list[int]:
    customers = await stripe_get(localstripe, "customers", limit=100)
    customer = next(
        c["id"] for c in customers["data"] if c["metadata"]["podmesh_tenant_id"] == tenant_id
    )
    items = await stripe_get(localstripe, "invoiceitems", customer=customer, limit=100)
    return sorted(
        int(i["metadata"]["podmesh_events"])
        for i in items["data"]
        if "podmesh_usage_key" in (i.get("metadata") or {})
    )


async def _usage_once_reachable(
    tenants: Tenants, request: tenant_pb2.GetUsageRequest, metadata: tuple[tuple[str, str], ...]
) -> tenant_pb2.GetUsageResponse:
    for _ in range(120):
        try:
            return await tenants.GetUsage(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.5)
    raise AssertionError("the tenant service never reached analytics again")


async def test_without_analytics_usage_is_unavailable_and_reporting_catches_up(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    localstripe: LocalStripe,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=2)
    await tenants.StartSubscription(
        tenant_pb2.StartSubscriptionRequest(
            tenant_id=seeded.tenant.id, plan="growth", payment_method=CARD
        ),
        metadata=bearer(seeded.tenant.owner_key) + request_id(),
    )
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    records = list(
        listener_traffic(seeded.episodes, 20, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    for batch in (records[:11], records[11:14]):
        ingested = await analytics.IngestListenerEvents(
            pb.IngestListenerEventsRequest(requests=batch), metadata=bearer(seeded.ingest_key)
        )
        assert ingested.accepted_count == len(batch)
        if len(batch) == 11:
            await tenants.ReportUsage(
                tenant_pb2.ReportUsageRequest(record_only=True),
                metadata=bearer(stack.admin_token),
            )
    usage = tenant_pb2.GetUsageRequest(tenant_id=seeded.tenant.id)
    owner = bearer(seeded.tenant.owner_key)

    await stack.kill_service("analytics")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await tenants.GetUsage(usage, metadata=owner)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as partial:
            await tenants.ReportUsage(
                tenant_pb2.ReportUsageRequest(), metadata=bearer(stack.admin_token)
            )
        assert partial.value.code() == grpc.StatusCode.UNAVAILABLE
        # What was recorded before analytics went away went to Stripe all the same.
        assert await _stripe_events(localstripe, seeded.tenant.id) == [11]
    finally:
        await stack.start_service("analytics")

    # The tenant service's channel to analytics reconnects on gRPC's backoff: until
    # then, usage stays UNAVAILABLE, which says to send again later.
    after = await _usage_once_reachable(tenants, usage, owner)
    assert after.counted_events == 14
    await tenants.ReportUsage(tenant_pb2.ReportUsageRequest(), metadata=bearer(stack.admin_token))
    assert await _stripe_events(localstripe, seeded.tenant.id) == [3, 11]
    after = await tenants.GetUsage(usage, metadata=owner)
    assert (after.counted_events, after.reported_events) == (14, 14)
