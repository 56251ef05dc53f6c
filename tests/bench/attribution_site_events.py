"""The attribution issue's site event benchmark: site events streamed through Envoy
(StreamSiteEvents on the gateway's gRPC port) until durable, against a raw COPY of the
same rows into site_events' day partitions, measured in the same run.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on).
BENCH_SCALE=1.0 streams 1,000,000 events; BENCH_SCALE=0.1 a tenth of that.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import grpc

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale
from tests.bench.processes import print_cpu, process_cpu

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.attribution.v1 import attribution_pb2 as pb  # noqa: E402
from podmesh.attribution.v1 import attribution_pb2_grpc  # noqa: E402
from podmesh.campaign.v1 import campaign_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402
from podmesh.type.v1 import money_pb2  # noqa: E402

from services.attribution.sites.records import (  # noqa: E402
    COLUMNS,
    PixelInfo,
    Request,
    check_batch,
)
from services.attribution.sites.store import partition_name  # noqa: E402
from services.shared.client_ip import IpHasher  # noqa: E402
from tests.analytics_ingest_support import api_key  # noqa: E402
from tests.campaign_support import create_sponsor  # noqa: E402
from tests.support import bearer, create_tenant  # noqa: E402

FULL_SIZE = 1_000_000
BATCH = 5_000
STREAMS = 2
IN_FLIGHT = 4
METHOD = "/podmesh.attribution.v1.AttributionService/StreamSiteEvents"
# Where a streamed event costs, beside the database.
METERED = ("attribution", "envoy")
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def site_events(pixel_id: str, total: int, start: dt.datetime, seed: int) -> list[pb.SiteEvent]:
    """Page views mostly, some leads and purchases, from 50,000 households, over the
    last three hours."""
    rng = random.Random(seed)
    events: list[pb.SiteEvent] = []
    for index in range(total):
        kind = rng.random()
        event = pb.SiteEvent(
            id=f"{seed}-{index}-{uuid.UUID(int=rng.getrandbits(128))}",
            type=pb.SITE_EVENT_TYPE_PAGE_VIEW,
            pixel_id=pixel_id,
            client_ip=f"10.{rng.randrange(4)}.{rng.randrange(250)}.{rng.randrange(50)}",
            user_agent=UA,
            url=f"https://shop.acme.example/products/{rng.randrange(500)}",
            referrer="https://www.google.com/",
        )
        event.event_time.FromDatetime(start + dt.timedelta(seconds=rng.randrange(3 * 3600)))
        if kind < 0.05:
            event.type = pb.SITE_EVENT_TYPE_LEAD
        elif kind < 0.10:
            event.type = pb.SITE_EVENT_TYPE_PURCHASE
            event.order_id = f"order-{seed}-{index}"
            event.value.CopyFrom(money_pb2.Money(currency_code="USD", minor_units=4999))
            if kind < 0.07:
                event.promo_code = "PODCAST20"
        events.append(event)
    return events


def stream_bodies(pixel_id: str, total: int, start: dt.datetime) -> list[list[bytes]]:
    """Each stream's batches, serialised once: the client's CPU is not what is measured."""
    streams: list[list[bytes]] = []
    for index in range(STREAMS):
        events = site_events(pixel_id, total // STREAMS, start, seed=100 + index)
        streams.append(
            [
                pb.StreamSiteEventsRequest(events=events[at : at + BATCH]).SerializeToString()
                for at in range(0, len(events), BATCH)
            ]
        )
    return streams


async def stream_all(channel: grpc.aio.Channel, key: str, bodies: list[bytes]) -> int:
    """Sends every batch with IN_FLIGHT unacknowledged; returns the events acknowledged."""
    call_factory = channel.stream_stream(
        METHOD,
        request_serializer=None,
        response_deserializer=pb.StreamSiteEventsResponse.FromString,
    )
    window = asyncio.Semaphore(IN_FLIGHT)

    async def requests() -> AsyncIterator[bytes]:
        for sequence, body in enumerate(bodies, start=1):
            await window.acquire()
            yield pb.StreamSiteEventsRequest(sequence=sequence).SerializeToString() + body

    acknowledged = 0
    call = call_factory(requests(), metadata=bearer(key))
    async for ack in call:
        if ack.rejections:
            raise RuntimeError(f"rejected: {ack.rejections[0]}")
        acknowledged += ack.accepted_count + ack.duplicate_count
        window.release()
    return acknowledged


def copy_rows(
    bodies: Sequence[bytes],
    tenant_id: uuid.UUID,
    pixel: PixelInfo,
    pixel_id: uuid.UUID,
    secret: str,
) -> list[list[tuple[object, ...]]]:
    """The rows ingestion writes for these batches, for another tenant."""
    hasher = IpHasher(secret.encode(), tenant_id)
    now = dt.datetime.now(dt.UTC)
    request = Request(anonymous=False, origin="", client_ip="127.0.0.1", user_agent="")
    out: list[list[tuple[object, ...]]] = []
    for body in bodies:
        checked = check_batch(
            pb.StreamSiteEventsRequest.FromString(body).events,
            tenant_id=tenant_id,
            pixels={pixel_id: pixel},
            sponsors=frozenset(),
            request=request,
            household=hasher.household_id,
            now=now,
            oldest=now - dt.timedelta(days=30),
        )
        out.append([tuple(row) for row in checked.rows])
    return out


async def copy_baseline(
    stack: Stack, streams: list[list[bytes]], pixel_id: uuid.UUID
) -> tuple[int, float]:
    """Raw COPY of the same rows into the day partitions, one connection per stream and
    one durable transaction per batch; only the copying is timed."""
    tenant_id = uuid.uuid4()
    pixel = PixelInfo(uuid.uuid4(), True, (), "acme.example")
    connections = [await asyncpg.connect(stack.owner_dsn) for _ in streams]
    rounds = [
        copy_rows(bodies, tenant_id, pixel, pixel_id, stack.secrets.ip_hash_secret)
        for bodies in streams
    ]
    for conn in connections:
        await conn.execute("SELECT set_config('app.tenant_id', $1, false)", str(tenant_id))

    async def copy(conn: asyncpg.Connection, batches: list[list[tuple[object, ...]]]) -> None:
        for rows in batches:
            by_day: dict[dt.date, list[tuple[object, ...]]] = {}
            for row in rows:
                by_day.setdefault(row[1].date(), []).append(row)  # type: ignore[attr-defined]
            async with conn.transaction():
                for day, day_rows in by_day.items():
                    await conn.copy_records_to_table(
                        partition_name(day), records=day_rows, columns=COLUMNS
                    )

    try:
        began = time.perf_counter()
        await asyncio.gather(*(copy(c, r) for c, r in zip(connections, rounds, strict=True)))
        elapsed = time.perf_counter() - began
    finally:
        for conn in connections:
            await conn.close()
    return sum(len(rows) for batches in rounds for rows in batches), elapsed


async def checkpoint(stack: Stack) -> None:
    """Flushes what the phase before wrote, so it does not slow the next one down."""
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        for day in (-1, 0):
            await conn.fetchval(
                "SELECT attribution_ensure_partitions('site_events', $1, $1)",
                dt.datetime.now(dt.UTC).date() + dt.timedelta(days=day),
            )
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def main() -> None:
    total = int(FULL_SIZE * scale())
    run_dir = ROOT / ".run" / f"bench-site-events-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with (
        Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack,
        grpc.aio.insecure_channel(stack.gateway_addr) as gateway,
    ):
        tenant = await create_tenant(
            tenant_pb2_grpc.TenantServiceStub(gateway), stack.admin_token, "bench"
        )
        key = await api_key(tenant_pb2_grpc.TenantServiceStub(gateway), tenant.owner_key)
        sponsor = await create_sponsor(
            campaign_pb2_grpc.CampaignServiceStub(gateway), tenant.owner_key
        )
        pixel = await attribution_pb2_grpc.AttributionServiceStub(gateway).CreatePixel(
            pb.CreatePixelRequest(pixel=pb.Pixel(sponsor_id=sponsor.id)),
            metadata=bearer(tenant.owner_key),
        )
        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3, minutes=5)
        print(f"generating {total:,} site events", flush=True)
        streams = stream_bodies(pixel.pixel.id, total, start)
        await checkpoint(stack)

        before = process_cpu(stack, ())
        copied, copy_seconds = await copy_baseline(stack, streams, uuid.UUID(pixel.pixel.id))
        print_cpu(
            "attribution_site_events_copy",
            before,
            process_cpu(stack, ()),
            copied,
            per="event",
            unit="us",
        )
        await checkpoint(stack)

        print(f"streaming over {STREAMS} streams through Envoy", flush=True)
        before = process_cpu(stack, METERED)
        began = time.perf_counter()
        acknowledged = sum(
            await asyncio.gather(*(stream_all(gateway, key, bodies) for bodies in streams))
        )
        stream_seconds = time.perf_counter() - began
        print_cpu(
            "attribution_site_events",
            before,
            process_cpu(stack, METERED),
            acknowledged,
            per="event",
            unit="us",
        )
    if not os.environ.get("PODMESH_KEEP_RUN"):
        shutil.rmtree(run_dir, ignore_errors=True)
    stream_rate = acknowledged / stream_seconds
    copy_rate = copied / copy_seconds
    print(
        f"streamed {acknowledged:,} events in {stream_seconds:.1f}s; copied {copied:,} in "
        f"{copy_seconds:.1f}s"
    )
    print(f"attribution_site_events_per_s: {stream_rate:.0f}")
    print(f"attribution_site_events_copy_per_s: {copy_rate:.0f}")
    print(f"attribution_site_events_vs_copy_ratio: {stream_rate / copy_rate:.2f}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
