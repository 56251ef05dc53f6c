"""Metered usage: the platform's own count of a tenant's events, recorded and reported
to Stripe (localstripe) exactly once, also across a crash of the tenant service."""

from __future__ import annotations

import uuid
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.localstripe import LocalStripe
from devstack.stack import Stack
from tests.analytics_ingest_support import (
    HOUR_US,
    IngestTenant,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.billing_support import CARD, request_id, stripe_get
from tests.support import bearer

Tenants: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


async def _growth_tenant(stack: Stack, tenants: Tenants, channel: grpc.aio.Channel) -> IngestTenant:
    seeded = await ingest_tenant(stack, tenants, channel, podcasts=1, episodes=2)
    await tenants.StartSubscription(
        tenant_pb2.StartSubscriptionRequest(
            tenant_id=seeded.tenant.id, plan="growth", payment_method=CARD
        ),
        metadata=bearer(seeded.tenant.owner_key) + request_id(),
    )
    return seeded


async def _ingest(channel: grpc.aio.Channel, seeded: IngestTenant, n: int) -> None:
    records = list(
        listener_traffic(seeded.episodes, n, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )[:n]
    response = await analytics_pb2_grpc.AnalyticsServiceStub(channel).IngestListenerEvents(
        pb.IngestListenerEventsRequest(requests=records), metadata=bearer(seeded.ingest_key)
    )
    assert response.accepted_count == n


async def _usage(tenants: Tenants, seeded: IngestTenant) -> tenant_pb2.GetUsageResponse:
    return await tenants.GetUsage(
        tenant_pb2.GetUsageRequest(tenant_id=seeded.tenant.id),
        metadata=bearer(seeded.tenant.owner_key),
    )


async def _in_stripe(localstripe: LocalStripe, tenants: Tenants, seeded: IngestTenant) -> list[int]:
    """The events each usage invoice item of the tenant's Stripe customer carries."""
    customers = await stripe_get(localstripe, "customers", limit=100)
    customer = next(
        c["id"] for c in customers["data"] if c["metadata"]["podmesh_tenant_id"] == seeded.tenant.id
    )
    items = await stripe_get(localstripe, "invoiceitems", customer=customer, limit=100)
    return [
        int(i["metadata"]["podmesh_events"])
        for i in items["data"]
        if "podmesh_usage_key" in (i.get("metadata") or {})
    ]


async def _report(tenants: Tenants, stack: Stack, *, record_only: bool = False) -> None:
    await tenants.ReportUsage(
        tenant_pb2.ReportUsageRequest(record_only=record_only),
        metadata=bearer(stack.admin_token),
    )


async def test_counted_events_are_reported_once(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    localstripe: LocalStripe,
) -> None:
    seeded = await _growth_tenant(stack, tenants, gateway_channel)
    await _ingest(gateway_channel, seeded, 37)
    assert (await _usage(tenants, seeded)).counted_events == 37

    await _report(tenants, stack)
    await _report(tenants, stack)
    usage = await _usage(tenants, seeded)
    assert usage.reported_events == 37
    assert usage.overage_events == 0
    assert usage.projected_bill.minor_units == 9_900
    assert await _in_stripe(localstripe, tenants, seeded) == [37]

    await _ingest(gateway_channel, seeded, 5)
    await _report(tenants, stack)
    assert sorted(await _in_stripe(localstripe, tenants, seeded)) == [5, 37]
    assert (await _usage(tenants, seeded)).reported_events == 42


async def test_a_crash_between_recording_and_reporting_loses_and_doubles_nothing(
    stack: Stack,
    tenants: Tenants,
    gateway_channel: grpc.aio.Channel,
    localstripe: LocalStripe,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await _growth_tenant(stack, tenants, gateway_channel)
    await _ingest(gateway_channel, seeded, 23)
    # Recorded, then the service dies before it reports.
    await _report(tenants, stack, record_only=True)
    assert await _in_stripe(localstripe, tenants, seeded) == []
    assert await stack.kill_service("tenant") == -9
    # Restarted, its reporter finishes the recorded rows (and this call waits for it).
    await stack.start_service("tenant")
    await _report(tenants, stack)
    assert await _in_stripe(localstripe, tenants, seeded) == [23]

    # Stripe took the row but the service died before marking it reported.
    await owner_conn.execute(
        "UPDATE billing_usage SET reported_at = NULL WHERE tenant_id = $1",
        uuid.UUID(seeded.tenant.id),
    )
    await _report(tenants, stack)
    assert await _in_stripe(localstripe, tenants, seeded) == [23]
    assert (await _usage(tenants, seeded)).reported_events == 23


async def test_only_the_platform_administrator_runs_the_reporter(
    stack: Stack, tenants: Tenants, gateway_channel: grpc.aio.Channel
) -> None:
    seeded = await _growth_tenant(stack, tenants, gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenants.ReportUsage(
            tenant_pb2.ReportUsageRequest(), metadata=bearer(seeded.tenant.owner_key)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
