"""CountAdDeliveries, the analytics RPC campaign pacing reads: ranges are validated
field by field, and a tenant without deliveries gets zeros in its time zone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import ts
from tests.support import bearer, create_tenant, violated_fields


async def test_ranges_are_checked_and_empty_tenants_get_zeros(
    gateway_channel: grpc.aio.Channel,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "ads")
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    now = datetime.now(UTC)
    slot = pb.AdSlotRange(
        ad_slot_id=str(uuid.uuid4()),
        episode_id=str(uuid.uuid4()),
        start_time=ts(now - timedelta(days=3, hours=5)),
        end_time=ts(now),
    )
    answer = await stub.CountAdDeliveries(
        pb.CountAdDeliveriesRequest(ranges=[slot]), metadata=bearer(tenant.owner_key)
    )
    assert answer.time_zone == "UTC"
    assert [(r.ad_slot_id, r.ads_delivered, list(r.days)) for r in answer.ranges] == [
        (slot.ad_slot_id, 0, [])
    ]

    # Group keys never reach SQL as text: any string is fine.
    odd = pb.AdSlotRange()
    odd.CopyFrom(slot)
    odd.group_key = "g'); DROP TABLE rollup_daily_ad_slot; --"
    grouped = await stub.CountAdDeliveries(
        pb.CountAdDeliveriesRequest(ranges=[odd, odd]), metadata=bearer(tenant.owner_key)
    )
    assert [(g.group_key, g.ads_delivered) for g in grouped.groups] == [(odd.group_key, 0)]

    backwards = pb.AdSlotRange(
        ad_slot_id=slot.ad_slot_id,
        episode_id=slot.episode_id,
        start_time=slot.end_time,
        end_time=slot.start_time,
    )
    too_long = pb.AdSlotRange(
        ad_slot_id=slot.ad_slot_id,
        episode_id=slot.episode_id,
        start_time=ts(now - timedelta(days=500)),
        end_time=ts(now),
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CountAdDeliveries(
            pb.CountAdDeliveriesRequest(ranges=[slot, backwards, too_long]),
            metadata=bearer(tenant.owner_key),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(bad.value) == ["ranges[1].end_time", "ranges[2].end_time"]

    with pytest.raises(grpc.aio.AioRpcError) as not_an_id:
        await stub.CountAdDeliveries(
            pb.CountAdDeliveriesRequest(ranges=[pb.AdSlotRange(ad_slot_id="x")]),
            metadata=bearer(tenant.owner_key),
        )
    assert not_an_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
