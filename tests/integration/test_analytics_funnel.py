"""The counting funnel end to end through Envoy: the acknowledgements split accepted
records into filtered (per reason), late and countable; GetCountingFunnel (gRPC and
JSON) adds up exactly, agrees with the counting package's batch function and with
QueryMetrics' downloads, is unchanged by RebuildCounts, and is the tenant's own."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.counting import (
    CountingSettings,
    CountingWindow,
    compile_rules,
)
from services.analytics.counting.funnel import Outcome, funnel_of_requests
from tests.analytics_ingest_support import (
    HOUR_US,
    LISTENER_AGENTS,
    IngestTenant,
    ResendingClient,
    anonymised,
    batches,
    ingest_tenant,
    listener_traffic,
    now_us,
    stamp_us,
    wait_rebuilt,
)
from tests.support import bearer

DAY_US = 24 * HOUR_US
FUNNEL_NUMBERS = (
    "received_count",
    "duplicate_count",
    "stored_count",
    "filtered_count",
    "late_count",
    "countable_count",
    "below_threshold_count",
    "window_repeat_count",
    "download_count",
)


@pytest.fixture
async def seeded(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, gateway_channel: grpc.aio.Channel
) -> IngestTenant:
    return await ingest_tenant(stack, tenants, gateway_channel, podcasts=2, episodes=2)


def seconds(time_us: int) -> Timestamp:
    return Timestamp(seconds=time_us // 1_000_000)


def crafted(seeded: IngestTenant, prefix: str, time_us: int) -> list[pb.ListenerRequest]:
    """A bot, a HEAD, the bytes=0-1 probe, one request days late, two requests of one
    listener's whole download, a listener stopping early, and a repeat within the batch."""
    episode = seeded.episodes[0]
    size = episode.media.size_bytes
    listener = LISTENER_AGENTS[0]

    def record(
        n: int,
        *,
        agent: str = listener,
        ip: str = "198.51.100.7",
        method: str = "GET",
        status: int = 200,
        range_header: str = "",
        served: int = size,
        at_us: int = time_us,
    ) -> pb.ListenerRequest:
        return pb.ListenerRequest(
            id=f"{prefix}-{n}",
            request_time=stamp_us(at_us + n),
            episode_id=episode.episode_id,
            client_ip=ip,
            user_agent=agent,
            http_method=method,
            status_code=status,
            range=range_header,
            bytes_served=served,
        )

    records = [
        record(1, agent="curl/8.1.2"),
        record(2, method="HEAD", served=0),
        record(3, status=206, range_header="bytes=0-1", served=2),
        record(4, at_us=now_us() - 5 * DAY_US),
        record(5),
        record(6, status=206, range_header="bytes=1000-", served=size - 1000),
        record(7, ip="198.51.100.8", status=206, range_header="bytes=0-", served=1_000),
    ]
    return [*records, records[4]]


def check_acknowledgement(counts: dict[str, object]) -> None:
    """The crafted batch's acknowledgement, in JSON form (as the gateway writes it)."""
    assert counts["acceptedCount"] == 7
    assert counts["duplicateCount"] == 1
    assert counts["filteredCounts"] == [
        {"reason": "FILTER_REASON_HEAD_REQUEST", "count": "1"},
        {"reason": "FILTER_REASON_PROBE_RANGE", "count": "1"},
        {"reason": "FILTER_REASON_BOT", "count": "1"},
    ]
    assert counts["lateCount"] == 1
    assert counts["countableCount"] == 3


async def funnel(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    start_us: int,
    end_us: int,
    **scope: str,
) -> pb.CountingFunnel:
    answer = await analytics.GetCountingFunnel(
        pb.GetCountingFunnelRequest(
            start_time=seconds(start_us), end_time=seconds(end_us), **scope
        ),
        metadata=bearer(key),
    )
    return answer.counting_funnel


def check_arithmetic(f: pb.CountingFunnel) -> None:
    assert f.received_count == f.duplicate_count + f.stored_count
    assert f.stored_count == f.filtered_count + f.late_count + f.countable_count
    assert f.filtered_count == sum(c.count for c in f.filtered_counts)
    assert f.countable_count == (f.below_threshold_count + f.window_repeat_count + f.download_count)


def numbers(f: pb.CountingFunnel) -> tuple[object, ...]:
    return (*(getattr(f, name) for name in FUNNEL_NUMBERS), list(f.filtered_counts))


async def query_downloads(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    start_us: int,
    end_us: int,
    podcast_id: str = "",
    time_zone: str = "",
) -> int:
    answer = await analytics.QueryMetrics(
        pb.QueryMetricsRequest(
            start_time=seconds(start_us),
            end_time=seconds(end_us),
            granularity=pb.GRANULARITY_TOTAL,
            podcast_id=podcast_id,
            time_zone=time_zone,
        ),
        metadata=bearer(key),
    )
    return answer.totals[0].downloads if answer.totals else 0


async def rebuild(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub, key: str, start_us: int
) -> None:
    started = await analytics.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(start_time=seconds(start_us), end_time=seconds(now_us()))
        ),
        metadata=bearer(key),
    )
    done = await wait_rebuilt(analytics, started.count_rebuild.id, key)
    assert done.state == pb.COUNT_REBUILD_STATE_SUCCEEDED, done.error_message


async def test_acknowledgements_split_accepted_records_by_outcome(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel, http: httpx.AsyncClient
) -> None:
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    recent = now_us() - HOUR_US
    streamed = crafted(seeded, "grpc", recent)

    async def one() -> AsyncIterator[pb.StreamListenerEventsRequest]:
        yield pb.StreamListenerEventsRequest(sequence=1, requests=streamed)

    acks = [
        ack
        async for ack in analytics.StreamListenerEvents(one(), metadata=bearer(seeded.ingest_key))
    ]
    assert len(acks) == 1
    check_acknowledgement(json_format.MessageToDict(acks[0]))
    assert acks[0].accepted_count == (
        acks[0].countable_count + sum(c.count for c in acks[0].filtered_counts) + acks[0].late_count
    )

    headers = {"authorization": f"Bearer {seeded.ingest_key}"}
    body = json_format.MessageToDict(
        pb.IngestListenerEventsRequest(requests=crafted(seeded, "json", recent + 1_000))
    )
    answer = await http.post("/api/v1/listenerEvents:ingest", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    check_acknowledgement(answer.json())

    resent = await http.post("/api/v1/listenerEvents:ingest", json=body, headers=headers)
    assert resent.json() == {
        "acceptedCount": 0,
        "duplicateCount": 8,
        "rejections": [],
        "filteredCounts": [],
        "lateCount": 0,
        "countableCount": 0,
    }

    # Both batches' requests of the listener who downloaded are one window: one
    # download and three window repeats; the listener who stopped early is one window
    # below the threshold and a repeat.
    owner = seeded.tenant.owner_key
    start, end = now_us() - 6 * DAY_US, now_us() + HOUR_US
    got = await funnel(analytics, owner, start, end)
    check_arithmetic(got)
    assert numbers(got)[:-1] == (24, 10, 14, 6, 2, 6, 1, 4, 1)
    assert [(c.reason, c.count) for c in got.filtered_counts] == [
        (pb.FILTER_REASON_HEAD_REQUEST, 2),
        (pb.FILTER_REASON_PROBE_RANGE, 2),
        (pb.FILTER_REASON_BOT, 2),
    ]
    assert got.download_count == await query_downloads(analytics, owner, start, end)

    # The rebuild counts the late requests: they join the downloads' funnel, and
    # nothing else moves.
    await rebuild(analytics, owner, start)
    after = await funnel(analytics, owner, start, end)
    check_arithmetic(after)
    assert (after.received_count, after.duplicate_count, after.filtered_count) == (24, 10, 6)
    assert after.late_count == 0
    assert after.countable_count == got.countable_count + got.late_count
    assert after.download_count == got.download_count + 1
    assert after.download_count == await query_downloads(analytics, owner, start, end)


@pytest.mark.parametrize(
    ("window", "time_zone"),
    [
        (CountingWindow.UTC_DAY, "UTC"),
        (CountingWindow.TENANT_DAY, "America/New_York"),
        (CountingWindow.ROLLING_24H, "Asia/Kolkata"),
    ],
)
async def test_funnel_adds_up_matches_downloads_and_survives_a_rebuild(
    window: CountingWindow,
    time_zone: str,
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
    http: httpx.AsyncClient,
) -> None:
    seeded = await ingest_tenant(stack, tenants, gateway_channel, podcasts=2, episodes=2)
    owner = seeded.tenant.owner_key
    await tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(
                id=seeded.tenant.id,
                settings=tenant_pb2.TenantSettings(
                    time_zone=time_zone, counting_window=tenant_pb2.CountingWindow.Name(window)
                ),
            ),
            update_mask=FieldMask(paths=["settings.time_zone", "settings.counting_window"]),
        ),
        metadata=bearer(owner),
    )
    start = now_us() - 40 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 1500, start_us=start, span_us=38 * HOUR_US))
    resends = records[::7]
    client = ResendingClient(gateway_channel, seeded.ingest_key)
    await client.send(batches(records, 200))
    await client.send(batches(resends, 200))
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    period = (start - 2 * DAY_US, now_us() + HOUR_US)

    whole = await funnel(analytics, owner, *period)
    check_arithmetic(whole)
    expected = funnel_of_requests(
        anonymised(
            records + resends, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
        ),
        {e.episode_id: e.media for e in seeded.episodes},
        CountingSettings(window=window, time_zone=time_zone),
    )
    by_outcome: Counter[Outcome] = Counter()
    for (_, _, outcome, _), n in expected.items():
        by_outcome[outcome] += n
    assert (
        whole.received_count,
        whole.duplicate_count,
        whole.filtered_count,
        whole.late_count,
        whole.below_threshold_count,
        whole.window_repeat_count,
        whole.download_count,
    ) == (
        len(records) + len(resends),
        len(resends),
        by_outcome[Outcome.FILTERED],
        0,
        by_outcome[Outcome.BELOW_THRESHOLD],
        by_outcome[Outcome.WINDOW_REPEAT],
        by_outcome[Outcome.DOWNLOAD],
    )
    assert whole.download_count == await query_downloads(analytics, owner, *period)
    assert whole.download_count > 0
    assert whole.time_zone == time_zone

    # Any shorter period, in the tenant's days or UTC days, podcast or episode: the same
    # arithmetic, and QueryMetrics' downloads.
    day = (start + 20 * HOUR_US, start + 30 * HOUR_US)
    check_arithmetic(part := await funnel(analytics, owner, *day))
    assert part.download_count == await query_downloads(analytics, owner, *day)
    check_arithmetic(utc := await funnel(analytics, owner, *day, time_zone="UTC"))
    assert utc.download_count == await query_downloads(analytics, owner, *day, time_zone="UTC")
    assert utc.time_zone == "UTC"
    podcasts = sorted({e.podcast_id for e in seeded.episodes})
    per_podcast = [await funnel(analytics, owner, *period, podcast_id=p) for p in podcasts]
    per_episode = [
        await funnel(analytics, owner, *period, episode_id=e.episode_id) for e in seeded.episodes
    ]
    for scoped in (per_podcast, per_episode):
        assert sum(f.received_count for f in scoped) == whole.received_count
        assert sum(f.download_count for f in scoped) == whole.download_count
    for podcast, f in zip(podcasts, per_podcast, strict=True):
        check_arithmetic(f)
        assert f.download_count == await query_downloads(
            analytics, owner, *period, podcast_id=podcast
        )

    # The same through the JSON gateway.
    answer = await http.get(
        "/api/v1/countingFunnel",
        params={
            "startTime": json_format.MessageToJson(seconds(period[0])).strip('"'),
            "endTime": json_format.MessageToJson(seconds(period[1])).strip('"'),
        },
        headers={"authorization": f"Bearer {owner}"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["countingFunnel"] == json_format.MessageToDict(
        whole, always_print_fields_with_no_presence=True
    )

    await rebuild(analytics, owner, start - 2 * HOUR_US)
    assert numbers(await funnel(analytics, owner, *period)) == numbers(whole)
    assert numbers(await funnel(analytics, owner, *day)) == numbers(part)
    assert numbers(await funnel(analytics, owner, *day, time_zone="UTC")) == numbers(utc)


async def test_another_tenant_sees_nothing_of_the_funnel(
    seeded: IngestTenant,
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    gateway_channel: grpc.aio.Channel,
) -> None:
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    start = now_us() - 3 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 300, start_us=start, span_us=2 * HOUR_US))
    await ResendingClient(gateway_channel, seeded.ingest_key).send(batches(records, 100))
    period = (start - DAY_US, now_us() + HOUR_US)
    episode = seeded.episodes[0].episode_id
    mine = await funnel(analytics, seeded.tenant.owner_key, *period, episode_id=episode)
    assert mine.received_count > 0

    other = await ingest_tenant(stack, tenants, gateway_channel, podcasts=1, episodes=1)
    theirs = await funnel(analytics, other.tenant.owner_key, *period, episode_id=episode)
    assert numbers(theirs) == numbers(pb.CountingFunnel())
    everything = await funnel(analytics, other.tenant.owner_key, *period)
    assert everything.received_count == 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "start_time"),
        ({"start_time": seconds(2_000_000_000), "end_time": seconds(1_000_000_000)}, "end_time"),
        (
            {"start_time": seconds(0), "end_time": seconds(500 * DAY_US)},
            "end_time",
        ),
        (
            {
                "start_time": seconds(0),
                "end_time": seconds(DAY_US),
                "podcast_id": "9c0d6c1e-4a52-4f7a-9a39-2a1e3c6b7d10",
                "episode_id": "9c0d6c1e-4a52-4f7a-9a39-2a1e3c6b7d11",
            },
            "episode_id",
        ),
        ({"start_time": seconds(0), "end_time": seconds(DAY_US), "episode_id": "x"}, "episode_id"),
        (
            {"start_time": seconds(0), "end_time": seconds(DAY_US), "time_zone": "Mars/Base"},
            "time_zone",
        ),
        (
            {"start_time": seconds(0), "end_time": seconds(DAY_US), "time_zone": "Asia/Tokyo"},
            "time_zone",
        ),
    ],
)
async def test_bad_funnel_requests_are_invalid_arguments(
    request_fields: dict[str, object],
    field: str,
    seeded: IngestTenant,
    gateway_channel: grpc.aio.Channel,
) -> None:
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await analytics.GetCountingFunnel(
            pb.GetCountingFunnelRequest(**request_fields),  # type: ignore[arg-type]
            metadata=bearer(seeded.tenant.owner_key),
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


async def test_batches_sharing_a_transaction_are_acknowledged_each_with_its_own_counts(
    seeded: IngestTenant, gateway_channel: grpc.aio.Channel, stack: Stack
) -> None:
    """Many batches in flight on one stream go into shared transactions (group commit);
    each acknowledgement still counts exactly its own records."""
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    start = now_us() - 2 * HOUR_US
    records = list(listener_traffic(seeded.episodes, 2400, start_us=start, span_us=HOUR_US))
    sent = list(batches(records, 150))

    async def stream() -> AsyncIterator[pb.StreamListenerEventsRequest]:
        for sequence, batch in enumerate(sent, start=1):
            yield pb.StreamListenerEventsRequest(sequence=sequence, requests=batch)

    acks = [
        ack
        async for ack in analytics.StreamListenerEvents(
            stream(), metadata=bearer(seeded.ingest_key)
        )
    ]

    reason_of = compile_rules(CountingSettings()).filter.reason
    assert [ack.sequence for ack in acks] == list(range(1, len(sent) + 1))
    for ack, batch in zip(acks, sent, strict=True):
        reasons = Counter(
            reason_of(r)
            for r in anonymised(
                batch, seeded.episodes, stack.secrets.ip_hash_secret, seeded.tenant.id
            )
        )
        filtered = {
            pb.FilterReason.Name(c.reason).removeprefix("FILTER_REASON_").lower(): c.count
            for c in ack.filtered_counts
        }
        assert filtered == {r.value: n for r, n in reasons.items() if r is not None}
        assert (ack.accepted_count, ack.late_count, ack.countable_count) == (
            len(batch),
            0,
            reasons[None],
        )
    got = await funnel(analytics, seeded.tenant.owner_key, start - DAY_US, now_us() + HOUR_US)
    assert got.countable_count == sum(ack.countable_count for ack in acks)
    assert got.filtered_count == sum(c.count for ack in acks for c in ack.filtered_counts)
