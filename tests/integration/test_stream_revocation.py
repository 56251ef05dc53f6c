"""A long stream lives no longer than its credential: revoking the key ends it, whether
the client keeps sending (StreamListenerEvents) or only listens (WatchMetrics)."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import redis.asyncio as aioredis
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.live import counters
from services.shared.config import Settings
from tests.analytics_ingest_support import (
    HOUR_US,
    batches,
    ingest_tenant,
    listener_traffic,
    now_us,
)
from tests.support import bearer, create_tenant

# The cache bound of other services, a re-check interval and slack for a loaded machine.
BOUND_S = Settings().auth_cache_ttl_s + 40


async def test_revoking_a_key_ends_its_listener_stream(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    owner_conn: asyncpg.Connection,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel)
    records = list(
        listener_traffic(seeded.episodes, 400, start_us=now_us() - HOUR_US, span_us=HOUR_US // 2)
    )
    chunks = list(batches(records, 20))
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    call = analytics.StreamListenerEvents(metadata=bearer(seeded.ingest_key))  # type: ignore[call-arg]

    await call.write(pb.StreamListenerEventsRequest(sequence=1, requests=chunks[0]))
    first = await call.read()
    assert isinstance(first, pb.StreamListenerEventsResponse)
    assert first.accepted_count > 0
    accepted = first.accepted_count

    key_id = next(
        k.id
        for k in (
            await tenants.ListApiKeys(
                tenant_pb2.ListApiKeysRequest(), metadata=bearer(seeded.tenant.owner_key)
            )
        ).api_keys
        if k.scopes == [tenant_pb2.API_KEY_SCOPE_INGEST]
    )
    await tenants.RevokeApiKey(
        tenant_pb2.RevokeApiKeyRequest(api_key_id=key_id), metadata=bearer(seeded.tenant.owner_key)
    )

    deadline = time.monotonic() + BOUND_S
    sequence = 1
    code: grpc.StatusCode | None = None
    while code is None:
        assert time.monotonic() < deadline, "the stream outlived its revoked key"
        sequence += 1
        chunk = chunks[(sequence - 1) % len(chunks)]
        try:
            await call.write(pb.StreamListenerEventsRequest(sequence=sequence, requests=chunk))
            ack = await call.read()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            break
        except asyncio.InvalidStateError:
            ack = None
        if not isinstance(ack, pb.StreamListenerEventsResponse):
            # The server ended the stream.
            code = await call.code()
            break
        accepted += ack.accepted_count
        await asyncio.sleep(0.25)

    assert code is grpc.StatusCode.UNAUTHENTICATED
    stored = await owner_conn.fetchval(
        "SELECT count(*) FROM listener_requests WHERE tenant_id = $1",
        uuid.UUID(seeded.tenant.id),
    )
    # Every record acknowledged as accepted was kept.
    assert stored >= accepted


async def test_revoking_a_key_ends_its_metrics_watch(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "watch")
    created = await tenants.CreateApiKey(
        tenant_pb2.CreateApiKeyRequest(
            api_key=tenant_pb2.ApiKey(display_name="wall", scopes=[tenant_pb2.API_KEY_SCOPE_READ])
        ),
        metadata=bearer(tenant.owner_key),
    )
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    redis = aioredis.from_url(stack.redis_url)
    recorder = counters.LiveRecorder(redis)
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        call = analytics.WatchMetrics(
            pb.WatchMetricsRequest(podcast_id=str(podcast)), metadata=bearer(created.secret)
        )
        try:
            assert isinstance(await call.read(), pb.WatchMetricsResponse)
            await tenants.RevokeApiKey(
                tenant_pb2.RevokeApiKeyRequest(api_key_id=created.api_key.id),
                metadata=bearer(tenant.owner_key),
            )
            deadline = time.monotonic() + BOUND_S
            while True:
                assert time.monotonic() < deadline, "the watch outlived its revoked key"
                # Something to report, so the stream has a reason to speak.
                await recorder.record_batch(
                    uuid.UUID(tenant.id),
                    requests=[counters.EpisodeRequests(episode, podcast, 1)],
                )
                try:
                    update = await asyncio.wait_for(call.read(), BOUND_S)
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    break
                if not isinstance(update, pb.WatchMetricsResponse):
                    code = await call.code()
                    break
                await asyncio.sleep(0.25)
        finally:
            call.cancel()
            await redis.aclose()
    assert code is grpc.StatusCode.UNAUTHENTICATED
