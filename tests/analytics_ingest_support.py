"""Listener traffic and an ingestion client, shared by the ingestion tests and benchmark.

`ResendingClient` is the client the README documents: it keeps a few batches in flight
on StreamListenerEvents, and after any disconnect opens a new stream and resends every
batch not acknowledged yet. `listener_traffic` makes realistic requests: whole-file
downloads, players reading in ranges (after the bytes=0-1 probe), listeners who stop
early, bots and HTTP libraries, HEAD and failed requests, and listeners coming back.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc
from datasketches import hll_sketch, hll_union
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack.stack import Stack
from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    CountingSettings,
    CountResult,
    EpisodeMedia,
    IpHasher,
    ListenerRequest,
    count_downloads,
)
from tests.support import TenantHandle, bearer, create_tenant

HOUR_US = 3_600_000_000
ID3_BYTES = 50_000
BITRATE = 128_000
LISTENER_AGENTS = (
    "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4 like Mac OS X; en_us)",
    "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0",
    "Spotify/8.9.36 iOS/17.4 (iPhone15,2)",
    "Spotify/8.8.20.544 Android/33 (SM-G991B)",
    "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)",
    "PocketCasts/7.43 (iPhone; iOS 16.5)",
    "AntennaPod/3.0.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; Sonos) AppleWebKit/537.36",
    "AlexaMediaPlayer/2.1.4676.0 (Linux;Android 5.1.1) ExoPlayerLib/1.5.9",
)
BOT_AGENTS = (
    "curl/8.1.2",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
    "okhttp/4.11.0",
)
COUNTRIES = ("US", "US", "US", "GB", "DE", "CA", "AU", "FR", "BR", "")


@dataclass(frozen=True)
class EpisodeSpec:
    """An episode as created in the catalog, and as counting sees it."""

    episode_id: str
    podcast_id: str
    media_url: str
    media: EpisodeMedia


def media_facts(episode_id: str, minutes: int, ads: Sequence[catalog_pb2.AdSlot]) -> EpisodeMedia:
    return EpisodeMedia(
        episode_id,
        size_bytes=ID3_BYTES + BITRATE * 60 * minutes // 8,
        id3_size_bytes=ID3_BYTES,
        bitrate_bps=BITRATE,
        duration_s=60.0 * minutes,
        ad_slots=tuple(
            AdSlot(
                slot.id,
                AdInsertion.BAKED_IN
                if slot.insertion == catalog_pb2.AD_INSERTION_BAKED_IN
                else AdInsertion.DYNAMIC,
                slot.start_byte,
                slot.end_byte,
            )
            for slot in ads
        ),
    )


async def create_episodes(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, credential: str, podcasts: int, each: int
) -> list[EpisodeSpec]:
    """Podcasts with episodes of 10 to 60 minutes at 128 kbps, most with ad slots."""
    specs: list[EpisodeSpec] = []
    rng = random.Random(podcasts * 1000 + each)
    for p in range(podcasts):
        podcast = await catalog.CreatePodcast(
            catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title=f"Show {p}")),
            metadata=bearer(credential),
        )
        for e in range(each):
            minutes = rng.choice((10, 25, 40, 60))
            slots = []
            if e % 3 != 2:
                slots.append(_slot(catalog_pb2.AD_POSITION_PRE_ROLL, 0, 30, e % 2 == 0))
            if e % 2 == 0:
                slots.append(_slot(catalog_pb2.AD_POSITION_MID_ROLL, minutes * 30, 60, False))
            url = f"https://cdn.example.com/{uuid.uuid4().hex}/episode-{p}-{e}.mp3"
            created = await catalog.CreateEpisode(
                catalog_pb2.CreateEpisodeRequest(
                    podcast_id=podcast.podcast.id,
                    episode=catalog_pb2.Episode(
                        title=f"Episode {e}",
                        media_url=url,
                        media_size_bytes=ID3_BYTES + BITRATE * 60 * minutes // 8,
                        duration={"seconds": 60 * minutes},
                        bitrate_bps=BITRATE,
                        id3_size_bytes=ID3_BYTES,
                        ad_slots=slots,
                    ),
                ),
                metadata=bearer(credential),
            )
            episode = created.episode
            specs.append(
                EpisodeSpec(
                    episode.id,
                    podcast.podcast.id,
                    url,
                    media_facts(episode.id, minutes, episode.ad_slots),
                )
            )
    return specs


def _slot(
    position: catalog_pb2.AdPosition, start_s: int, length_s: int, baked: bool
) -> catalog_pb2.AdSlot:
    return catalog_pb2.AdSlot(
        position=position,
        start_offset={"seconds": start_s},
        duration={"seconds": length_s},
        insertion=catalog_pb2.AD_INSERTION_BAKED_IN if baked else catalog_pb2.AD_INSERTION_DYNAMIC,
    )


def stamp_us(time_us: int) -> Timestamp:
    """A Timestamp from microseconds since the epoch."""
    return Timestamp(seconds=time_us // 1_000_000, nanos=time_us % 1_000_000 * 1000)


@dataclass
class _Listener:
    ip: str
    user_agent: str
    country: str


def _listener(rng: random.Random) -> _Listener:
    if rng.random() < 0.15:
        ip = f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
    else:
        octets = (
            rng.randrange(1, 224),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(1, 255),
        )
        ip = ".".join(map(str, octets))
    return _Listener(ip, rng.choice(LISTENER_AGENTS), rng.choice(COUNTRIES))


def listener_traffic(
    episodes: Sequence[EpisodeSpec],
    requests: int,
    *,
    start_us: int,
    span_us: int,
    seed: int = 1,
    by_url: float = 0.5,
) -> Iterator[pb.ListenerRequest]:
    """About `requests` listener requests in time order over [start_us, start_us + span_us).

    Sessions: 40% whole-file GETs, 30% players reading in ranges after the probe
    (enough for a download), 10% listeners stopping before a minute, 12% bots,
    HEAD and failed requests, 8% listeners coming back for an episode they already
    downloaded. Records name their episode by id or by media URL.
    """
    rng = random.Random(seed)
    seen: list[tuple[_Listener, EpisodeSpec]] = []
    produced = 0
    step = span_us // max(requests, 1)
    time_us = start_us
    serial = 0
    while produced < requests:
        kind = rng.random()
        if kind < 0.08 and seen:
            listener, episode = rng.choice(seen)
        else:
            listener, episode = _listener(rng), rng.choice(episodes)
        size = episode.media.size_bytes
        threshold = episode.media.threshold_bytes or size
        session: list[tuple[str, str, int, str, int, str]] = []
        user_agent = listener.user_agent
        if kind < 0.48:
            session.append(("GET", "", 200, "", size, user_agent))
        elif kind < 0.78:
            session.append(("GET", "bytes=0-1", 206, "", 2, user_agent))
            offset = 0
            end = rng.randrange(threshold + 1, size + 1)
            while offset < end:
                chunk = min(rng.randrange(500_000, 3_000_000), end - offset)
                session.append(("GET", f"bytes={offset}-", 206, "", chunk, user_agent))
                offset += chunk
        elif kind < 0.88:
            session.append(("GET", "bytes=0-1", 206, "", 2, user_agent))
            session.append(
                ("GET", "bytes=0-", 206, "", rng.randrange(1, threshold // 2), user_agent)
            )
        elif kind < 0.94:
            bot = rng.choice(BOT_AGENTS)
            session.append(("GET", "", 200, "", size, bot))
        elif kind < 0.97:
            session.append(("HEAD", "", 200, "", 0, user_agent))
        else:
            session.append(("GET", "", rng.choice((404, 416, 500)), "", 0, user_agent))
        if kind >= 0.08:
            seen.append((listener, episode))
            if len(seen) > 5000:
                seen.pop(rng.randrange(len(seen)))
        referer = "https://example.com/show" if rng.random() < 0.1 else ""
        use_url = rng.random() < by_url
        for method, range_header, status, _, served, agent in session:
            serial += 1
            record = pb.ListenerRequest(
                id=f"req-{seed}-{serial}",
                request_time=stamp_us(time_us),
                client_ip=listener.ip,
                user_agent=agent,
                referer=referer,
                http_method=method,
                status_code=status,
                range=range_header,
                bytes_served=served,
                country_code=listener.country,
            )
            if use_url:
                record.media_url = episode.media_url
            else:
                record.episode_id = episode.episode_id
            yield record
            produced += 1
            time_us += rng.randrange(1, 2 * step + 1) if step else 0


async def wait_rebuilt(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    rebuild_id: str,
    key: str,
    *,
    poll_s: float = 0.1,
    timeout_s: float = 20.0,
) -> pb.CountRebuild:
    """The rebuild once it has ended, succeeded or failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await analytics.GetCountRebuild(
            pb.GetCountRebuildRequest(count_rebuild_id=rebuild_id), metadata=bearer(key)
        )
        if got.count_rebuild.state not in (
            pb.COUNT_REBUILD_STATE_PENDING,
            pb.COUNT_REBUILD_STATE_RUNNING,
        ):
            return got.count_rebuild
        await asyncio.sleep(poll_s)
    raise AssertionError("the rebuild did not finish")


def batches(records: Iterable[pb.ListenerRequest], size: int) -> Iterator[list[pb.ListenerRequest]]:
    batch: list[pb.ListenerRequest] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def expected_counts(
    records: Iterable[pb.ListenerRequest],
    episodes: Sequence[EpisodeSpec],
    ip_hash_secret: str,
    tenant_id: str,
    settings: CountingSettings | None = None,
) -> CountResult:
    """What counting must produce for these records: the batch function over them."""
    requests = anonymised(records, episodes, ip_hash_secret, tenant_id)
    media = {e.episode_id: e.media for e in episodes}
    return count_downloads(requests, media, settings or CountingSettings())


def anonymised(
    records: Iterable[pb.ListenerRequest],
    episodes: Sequence[EpisodeSpec],
    ip_hash_secret: str,
    tenant_id: str,
) -> list[ListenerRequest]:
    """The records as counting sees them: episode resolved, addresses hashed."""
    hasher = IpHasher(ip_hash_secret.encode(), tenant_id)
    by_key = {e.episode_id: e for e in episodes} | {e.media_url: e for e in episodes}
    return [
        ListenerRequest.from_raw(
            request_id=r.id,
            time_us=r.request_time.ToMicroseconds(),
            episode_id=by_key[r.episode_id or r.media_url].episode_id,
            client_ip=r.client_ip,
            user_agent=r.user_agent,
            hasher=hasher,
            method=r.http_method,
            status=r.status_code,
            range_header=r.range,
            bytes_served=r.bytes_served,
            country_code=r.country_code,
            referer=r.referer,
        )
        for r in records
    ]


# --- the client -----------------------------------------------------------------------

# Worth a new stream and a resend: the server, the gateway or the network went away.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)


@dataclass
class Totals:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reconnects: int = 0
    rejections: list[pb.Rejection] = field(default_factory=list)


class ResendingClient:
    """Streams batches with a few in flight; resends what was not acknowledged."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        credential: str,
        *,
        in_flight: int = 4,
        max_reconnects: int = 100,
        on_ack: Callable[[Totals], None] | None = None,
    ) -> None:
        self._stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        self._metadata = bearer(credential)
        self._in_flight = in_flight
        self._max_reconnects = max_reconnects
        self._on_ack = on_ack
        # Of the last send, updated as acknowledgements arrive.
        self.totals = Totals()

    async def send(self, source: Iterable[list[pb.ListenerRequest]]) -> Totals:
        totals = self.totals = Totals()
        new_batches = iter(source)
        unacked: dict[int, list[pb.ListenerRequest]] = {}  # by our own batch number
        numbers = iter(range(1, 1 << 62))
        while True:
            try:
                await self._stream(new_batches, unacked, numbers, totals)
                if not unacked:
                    return totals
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or totals.reconnects >= self._max_reconnects:
                    raise
                totals.reconnects += 1
                await asyncio.sleep(min(0.1 * totals.reconnects, 1.0))

    async def _stream(
        self,
        new_batches: Iterator[list[pb.ListenerRequest]],
        unacked: dict[int, list[pb.ListenerRequest]],
        numbers: Iterator[int],
        totals: Totals,
    ) -> None:
        window = asyncio.Semaphore(self._in_flight)
        sent: dict[int, int] = {}  # stream sequence -> batch number
        resend = list(unacked)
        # Written to with call.write(), not from a request iterator.
        call = self._stub.StreamListenerEvents(metadata=self._metadata)  # type: ignore[call-arg]

        async def write() -> None:
            sequence = 0
            while True:
                await window.acquire()
                if resend:
                    number = resend.pop(0)
                else:
                    batch = next(new_batches, None)
                    if batch is None:
                        await call.done_writing()
                        return
                    number = next(numbers)
                    unacked[number] = batch
                sequence += 1
                sent[sequence] = number
                await call.write(
                    pb.StreamListenerEventsRequest(sequence=sequence, requests=unacked[number])
                )

        writer = asyncio.create_task(write())
        try:
            async for ack in call:
                number = sent.pop(ack.sequence)
                del unacked[number]
                totals.accepted += ack.accepted_count
                totals.duplicates += ack.duplicate_count
                totals.rejected += len(ack.rejections)
                totals.rejections.extend(ack.rejections)
                window.release()
                if self._on_ack is not None:
                    self._on_ack(totals)
            await writer
        finally:
            writer.cancel()


# --- checking what was stored -----------------------------------------------------------


@dataclass(frozen=True)
class IngestTenant:
    tenant: TenantHandle
    ingest_key: str
    episodes: list[EpisodeSpec]


def now_us() -> int:
    return time.time_ns() // 1000


async def api_key(
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    owner_key: str,
    scope: tenant_pb2.ApiKeyScope = tenant_pb2.API_KEY_SCOPE_INGEST,
) -> str:
    created = await tenants.CreateApiKey(
        tenant_pb2.CreateApiKeyRequest(
            api_key=tenant_pb2.ApiKey(display_name="shipper", scopes=[scope])
        ),
        metadata=bearer(owner_key),
    )
    return created.secret


async def ingest_tenant(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    channel: grpc.aio.Channel,
    *,
    podcasts: int = 2,
    episodes: int = 3,
) -> IngestTenant:
    """A new tenant with an ingest key and a catalog, made through the public RPCs."""
    tenant = await create_tenant(tenants, stack.admin_token, "ingest")
    specs = await create_episodes(
        catalog_pb2_grpc.CatalogServiceStub(channel), tenant.owner_key, podcasts, episodes
    )
    return IngestTenant(tenant, await api_key(tenants, tenant.owner_key), specs)


async def counted(conn: asyncpg.Connection, tenant_id: str) -> dict[str, int]:
    """What the tenant's raw, detail and cube tables hold, summed."""
    totals: dict[str, int] = {}
    for name, sql in _TOTALS.items():
        totals[name] = await conn.fetchval(sql, uuid.UUID(tenant_id))
    return totals


_TOTALS = {
    "raw": "SELECT count(*) FROM listener_requests WHERE tenant_id = $1",
    "downloads": "SELECT count(*) FROM downloads WHERE tenant_id = $1",
    "listeners": "SELECT count(DISTINCT listener_id) FROM downloads WHERE tenant_id = $1",
    "ads": "SELECT count(*) FROM ad_deliveries WHERE tenant_id = $1",
    "hourly": "SELECT coalesce(sum(downloads), 0) FROM rollup_hourly WHERE tenant_id = $1",
    "hourly_ads": "SELECT coalesce(sum(ads_delivered), 0) FROM rollup_hourly WHERE tenant_id = $1",
    "daily": "SELECT coalesce(sum(downloads), 0) FROM rollup_daily "
    "WHERE tenant_id = $1 AND zone = 'UTC'",
    "by_app": "SELECT coalesce(sum(downloads), 0) FROM rollup_daily_dimension "
    "WHERE tenant_id = $1 AND zone = 'UTC' AND dimension = 'app'",
    "by_country": "SELECT coalesce(sum(downloads), 0) FROM rollup_daily_dimension "
    "WHERE tenant_id = $1 AND zone = 'UTC' AND dimension = 'country'",
    "by_slot": "SELECT coalesce(sum(ads_delivered), 0) FROM rollup_daily_ad_slot "
    "WHERE tenant_id = $1 AND zone = 'UTC'",
}


def expected_tables(result: CountResult, raw: int) -> dict[str, int]:
    """What `counted` must find for these counts and this many raw requests."""
    downloads = len(result.downloads)
    ads = len(result.ads)
    return {
        "raw": raw,
        "downloads": downloads,
        "listeners": len({d.listener_id for d in result.downloads}),
        "ads": ads,
        "hourly": downloads,
        "hourly_ads": ads,
        "daily": downloads,
        "by_app": downloads,
        "by_country": downloads,
        "by_slot": ads,
    }


async def listeners_estimate(conn: asyncpg.Connection, tenant_id: str) -> float:
    """Unique listeners over all of the tenant's UTC day sketches, as dashboards merge them."""
    union = hll_union(12)
    for row in await conn.fetch(
        "SELECT sketch FROM listener_sketches WHERE tenant_id = $1 AND zone = 'UTC'",
        uuid.UUID(tenant_id),
    ):
        union.update(hll_sketch.deserialize(row["sketch"]))
    return float(union.get_estimate())
