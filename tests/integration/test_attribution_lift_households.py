"""ListPodcastHouseholds, where attribution's lift finds its control group: the distinct
households with counted downloads of some podcasts in a period, as ingestion hashed
them, only the caller's tenant's, streamed in chunks; and the attribution-side client."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.queries.households import CHUNK_IDS
from services.attribution.lift.control import ExposedHouseholds, campaign_lift
from services.attribution.lift.statistics import LiftUnavailable
from services.attribution.peers import Analytics
from services.shared.client_ip import IpHasher
from services.shared.errors import PermissionDenied
from tests.analytics_ingest_support import (
    IngestTenant,
    ResendingClient,
    batches,
    ingest_tenant,
    stamp_us,
)
from tests.support import bearer, create_tenant, violated_fields

# Podcast A's listeners, downloading two hours ago. One household twice over: two
# User-Agents behind one IPv4 address, and two addresses in one IPv6 /64.
A_LISTENERS = [
    ("198.51.100.7", "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X)"),
    ("198.51.100.7", "Spotify/8.9.36 iOS/17.4 (iPhone15,2)"),
    ("198.51.100.8", "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)"),
    ("2001:db8:5:6::1", "AntennaPod/3.0.1"),
    ("2001:db8:5:6::ffff", "PocketCasts/7.43 (iPhone; iOS 16.5)"),
    ("203.0.113.20", "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0"),
]
# Podcast B's, an hour ago; 203.0.113.20 listens to both.
B_LISTENERS = [
    ("203.0.113.20", "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0"),
    ("192.0.2.50", "AntennaPod/3.0.1"),
]
# Requests that count as no download: a bot and a failed request.
NOT_COUNTED = [
    ("192.0.2.99", "curl/8.1.2", 200),
    ("192.0.2.98", "AntennaPod/3.0.1", 404),
]


def ts(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def whole_file(
    seeded: IngestTenant, podcast: int, ip: str, agent: str, at: datetime, status: int = 200
) -> pb.ListenerRequest:
    episode = next(e for e in seeded.episodes if e.podcast_id == podcast_id(seeded, podcast))
    return pb.ListenerRequest(
        id=f"req-{uuid.uuid4()}",
        request_time=stamp_us(int(at.timestamp() * 1_000_000)),
        episode_id=episode.episode_id,
        client_ip=ip,
        user_agent=agent,
        http_method="GET",
        status_code=status,
        bytes_served=episode.media.size_bytes if status == 200 else 0,
        country_code="US",
    )


def podcast_id(seeded: IngestTenant, index: int) -> str:
    return sorted({e.podcast_id for e in seeded.episodes})[index]


async def households(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    podcasts: list[str],
    start: datetime,
    end: datetime,
) -> list[bytes]:
    """Every id streamed, in the order received (duplicates kept, to be caught)."""
    call = stub.ListPodcastHouseholds(
        pb.ListPodcastHouseholdsRequest(
            podcast_ids=podcasts, start_time=ts(start), end_time=ts(end)
        ),
        metadata=bearer(key),
    )
    ids: list[bytes] = []
    async for response in call:
        packed = response.household_ids
        assert packed
        assert len(packed) % 16 == 0
        assert len(packed) <= 16 * CHUNK_IDS
        ids.extend(packed[i : i + 16] for i in range(0, len(packed), 16))
    return ids


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    tenant = await ingest_tenant(stack, tenants, gateway_channel, podcasts=3, episodes=1)
    now = datetime.now(UTC)
    records = [
        whole_file(tenant, 0, ip, agent, now - timedelta(hours=2)) for ip, agent in A_LISTENERS
    ]
    records += [
        whole_file(tenant, 1, ip, agent, now - timedelta(hours=1)) for ip, agent in B_LISTENERS
    ]
    records += [
        whole_file(tenant, 0, ip, agent, now - timedelta(hours=2), status)
        for ip, agent, status in NOT_COUNTED
    ]
    client = ResendingClient(gateway_channel, tenant.ingest_key)
    totals = await client.send(batches(records, 100))
    assert totals.accepted == len(records)
    return tenant


async def test_distinct_households_of_the_podcasts_in_the_period(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel, stack: Stack
) -> None:
    hasher = IpHasher(stack.secrets.ip_hash_secret.encode(), seeded.tenant.id)
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    key = seeded.tenant.owner_key
    now = datetime.now(UTC)
    a, b, c = (podcast_id(seeded, i) for i in range(3))

    both = await households(stub, key, [a, b], now - timedelta(days=1), now)
    expected = {hasher.household_id(ip) for ip, _ in A_LISTENERS + B_LISTENERS}
    assert len(expected) == 5
    assert len(both) == len(set(both))
    assert set(both) == expected

    only_a = await households(stub, key, [a], now - timedelta(days=1), now)
    assert set(only_a) == {hasher.household_id(ip) for ip, _ in A_LISTENERS}
    # The period is half-open and by download time: B's hour-old downloads are not in
    # a period that ends 90 minutes ago.
    early = await households(
        stub, key, [a, b], now - timedelta(days=1), now - timedelta(minutes=90)
    )
    assert set(early) == set(only_a)
    assert await households(stub, key, [a, b], now - timedelta(minutes=30), now) == []
    # A podcast without downloads, and one that does not exist, add nothing.
    assert await households(stub, key, [c, str(uuid.uuid4())], now - timedelta(days=1), now) == []


async def test_the_attribution_client_reads_them_directly(
    seeded: IngestTenant, stack: Stack
) -> None:
    hasher = IpHasher(stack.secrets.ip_hash_secret.encode(), seeded.tenant.id)
    now = datetime.now(UTC)
    async with grpc.aio.insecure_channel(stack.service_addr("analytics")) as channel:
        analytics = Analytics(channel)
        got = [
            household
            async for chunk in analytics.podcast_households(
                [uuid.UUID(podcast_id(seeded, 1))],
                now - timedelta(days=1),
                now,
                bearer(seeded.tenant.owner_key),
            )
            for household in chunk
        ]
        assert sorted(got) == sorted(hasher.household_id(ip) for ip, _ in B_LISTENERS)
        # The campaign's lift: 150 exposed households, one of which (203.0.113.20)
        # downloaded both podcasts, so 4 of the 5 downloaders are control.
        exposed = {os.urandom(16) for _ in range(149)} | {hasher.household_id("203.0.113.20")}
        lift = await campaign_lift(
            analytics,
            bearer(seeded.tenant.owner_key),
            [uuid.UUID(podcast_id(seeded, 0)), uuid.UUID(podcast_id(seeded, 1))],
            now - timedelta(days=1),
            now,
            ExposedHouseholds(exposed, frozenset(), frozenset()),
            frozenset(),
            frozenset(),
        )
        assert lift == LiftUnavailable("control group has 4 households; at least 100 needed")
        with pytest.raises(PermissionDenied):
            async for _ in analytics.podcast_households(
                [uuid.UUID(podcast_id(seeded, 1))],
                now - timedelta(days=1),
                now,
                bearer(seeded.ingest_key),
            ):
                pass


async def test_another_tenant_sees_none_of_them(
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    other = await create_tenant(tenants, stack.admin_token, "other")
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    now = datetime.now(UTC)
    podcasts = [podcast_id(seeded, 0), podcast_id(seeded, 1)]
    assert await households(stub, other.owner_key, podcasts, now - timedelta(days=1), now) == []
    assert await households(stub, seeded.tenant.owner_key, podcasts, now - timedelta(days=1), now)


async def test_many_households_arrive_in_chunks_each_once(
    gateway_channel: grpc.aio.Channel,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    owner_conn: asyncpg.Connection,
    stack: Stack,
) -> None:
    """Downloads written as counting writes them (two episodes, so most households
    twice): more households than one message holds."""
    tenant = await create_tenant(tenants, stack.admin_token, "many")
    tenant_id, podcast = uuid.UUID(tenant.id), uuid.uuid4()
    episodes = (uuid.uuid4(), uuid.uuid4())
    start = datetime(2026, 3, 1, tzinfo=UTC)
    distinct = [os.urandom(16) for _ in range(CHUNK_IDS + 5000)]
    rows = [
        (
            tenant_id,
            episodes[i % 2],
            os.urandom(16),
            start,
            podcast,
            start + timedelta(seconds=i),
            h,
            "test",
        )
        for i, h in enumerate(distinct + distinct[: CHUNK_IDS // 2])
    ]
    await owner_conn.copy_records_to_table(
        "downloads",
        records=rows,
        columns=[
            "tenant_id",
            "episode_id",
            "listener_id",
            "window_start",
            "podcast_id",
            "download_time",
            "household_id",
            "user_agent_lists",
        ],
    )
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    got = await households(
        stub, tenant.owner_key, [str(podcast)], start, start + timedelta(days=30)
    )
    assert len(got) == len(distinct)
    assert set(got) == set(distinct)


async def test_bad_requests_are_refused_field_by_field(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel
) -> None:
    stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    now = datetime.now(UTC)
    podcast = podcast_id(seeded, 0)
    cases = [
        (pb.ListPodcastHouseholdsRequest(start_time=ts(now - timedelta(days=1)), end_time=ts(now)),
         ["podcast_ids"]),
        (pb.ListPodcastHouseholdsRequest(
            podcast_ids=[podcast, "not-a-uuid"], start_time=ts(now - timedelta(days=1)),
            end_time=ts(now)), ["podcast_ids[1]"]),
        (pb.ListPodcastHouseholdsRequest(podcast_ids=[podcast], end_time=ts(now)),
         ["start_time"]),
        (pb.ListPodcastHouseholdsRequest(
            podcast_ids=[podcast], start_time=ts(now), end_time=ts(now - timedelta(days=1))),
         ["end_time"]),
        (pb.ListPodcastHouseholdsRequest(
            podcast_ids=[podcast], start_time=ts(now - timedelta(days=401)), end_time=ts(now)),
         ["end_time"]),
        (pb.ListPodcastHouseholdsRequest(
            podcast_ids=[str(uuid.uuid4()) for _ in range(1001)],
            start_time=ts(now - timedelta(days=1)), end_time=ts(now)), ["podcast_ids"]),
    ]  # fmt: skip
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ListPodcastHouseholds(
                request, metadata=bearer(seeded.tenant.owner_key)
            ):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert violated_fields(refused.value) == fields

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        async for _ in stub.ListPodcastHouseholds(
            pb.ListPodcastHouseholdsRequest(
                podcast_ids=[podcast], start_time=ts(now - timedelta(days=1)), end_time=ts(now)
            ),
            metadata=bearer(seeded.ingest_key),
        ):
            pass
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
