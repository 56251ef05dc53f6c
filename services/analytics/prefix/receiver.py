"""Envoy's gRPC access log service, receiving the prefix route's requests.

Envoy opens a client stream (StreamAccessLogs) per worker and sends batches of entries
about once a second; nothing is answered until the stream ends. A batch is stored as it
arrives, one transaction per tenant, so what was received survives a restart of either
side. Delivery is best effort (see gateway.prefix_redirect): Envoy does not resend.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from grpc import aio

from services.analytics.counting.filters import RequestFilter
from services.analytics.counting.user_agents import UNKNOWN
from services.analytics.ingest.episodes import Resolution
from services.analytics.ingest.records import Episode
from services.analytics.peers import Metadata, TenantProfile
from services.analytics.prefix.entries import PrefixHit, prefix_hit
from services.analytics.prefix.methodology import prefix_filter_reason, window_day
from services.shared.auth import MethodRule, Permission
from services.shared.client_ip import InvalidIpError, IpHasher
from services.shared.db import Database
from services.shared.errors import DomainError, NotFound
from services.shared.inputs import MIB, InputRule, InputRules

log = logging.getLogger("podmesh.analytics.prefix")

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
# Only the gateway, with the platform administrator's token, may report requests.
RULES: dict[str, MethodRule] = {f"/{SERVICE}/StreamAccessLogs": Permission.PLATFORM_ADMIN}
# Envoy sends what it buffered since its last flush, hundreds of entries under load.
# The entries are checked one by one (services.analytics.prefix.entries), so the
# shared walk, which would refuse the whole batch for one bad entry, leaves them out.
INPUTS: InputRules = {
    f"/{SERVICE}/StreamAccessLogs": InputRule(
        max_bytes=16 * MIB, unchecked_fields=frozenset({"http_logs", "tcp_logs"})
    )
}

_EPOCH = dt.date(1970, 1, 1)
HOUR_US = 3_600_000_000
# The prefix funnel's episode for requests whose media URL matches no episode.
NO_EPISODE = uuid.UUID(int=0)
# A tenant created after its prefix was first seen is counted from this long after.
UNKNOWN_PREFIX_TTL_S = 60.0
MAX_UNKNOWN_PREFIXES = 100_000

Clock = Callable[[], float]


class TenantSource(Protocol):
    async def get(self, tenant_id: uuid.UUID) -> TenantProfile: ...


class EpisodeSource(Protocol):
    async def resolve(
        self,
        tenant_id: uuid.UUID,
        episode_ids: Collection[str],
        media_urls: Collection[str],
        credentials: Metadata,
    ) -> Resolution: ...


class PrefixRecorder:
    """Stores prefix requests and counts them by the prefix methodology.

    The receiver's caller is the gateway with the platform credential, which acts on
    tenants, not in one. The tenant of a request comes only from its prefix: the
    catalog resolves the media URL in that tenant (`episodes` names it in each
    request, which the catalog allows the platform administrator alone), and the
    request is stored in that tenant's transaction, under row-level security like
    every other write.
    """

    def __init__(
        self,
        db: Database,
        tenants: TenantSource,
        episodes: EpisodeSource,
        credentials: Metadata,
        ip_hash_secret: bytes,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._db = db
        self._tenants = tenants
        self._episodes = episodes
        self._credentials = credentials
        self._secret = ip_hash_secret
        self._hashers: dict[uuid.UUID, IpHasher] = {}
        self._filter = RequestFilter()
        self._clock = clock
        # Prefix ids anyone can make up: each is asked about once a while, not once a
        # batch, so made-up prefixes cannot slow the stream down to losing entries.
        self._unknown: dict[uuid.UUID, float] = {}

    async def record(self, hits: Sequence[PrefixHit]) -> int:
        """Stores `hits`; the number of new downloads they counted."""
        by_tenant: dict[uuid.UUID, list[PrefixHit]] = defaultdict(list)
        for hit in hits:
            by_tenant[hit.tenant_id].append(hit)
        counted = 0
        for tenant_id, tenant_hits in by_tenant.items():
            if not await self._tenant_exists(tenant_id):
                continue
            episodes = await self._resolve(tenant_id, tenant_hits)
            counted += await self._db.in_tenant_transaction(
                tenant_id,
                functools.partial(
                    _store, tenant_id=tenant_id, rows=self._rows(tenant_id, tenant_hits, episodes)
                ),
            )
        return counted

    async def _resolve(self, tenant_id: uuid.UUID, hits: Sequence[PrefixHit]) -> dict[str, Episode]:
        urls = {hit.media_url for hit in hits}
        try:
            resolution = await self._episodes.resolve(tenant_id, (), urls, self._credentials)
        except DomainError as error:
            # Envoy does not resend: the requests are kept (unmatched, not counted)
            # rather than lost with the batch.
            log.warning("prefix requests stored unresolved: %d (%s)", len(hits), error)
            return {}
        return resolution.by_url

    async def _tenant_exists(self, tenant_id: uuid.UUID) -> bool:
        now = self._clock()
        if self._unknown.get(tenant_id, 0.0) > now:
            return False
        try:
            await self._tenants.get(tenant_id)
        except NotFound:
            # A well-formed prefix of no tenant: redirected, never counted.
            if len(self._unknown) >= MAX_UNKNOWN_PREFIXES:
                self._unknown.clear()
            self._unknown[tenant_id] = now + UNKNOWN_PREFIX_TTL_S
            return False
        return True

    def _rows(
        self, tenant_id: uuid.UUID, hits: Sequence[PrefixHit], episodes: Mapping[str, Episode]
    ) -> list[_Row]:
        hasher = self._hashers.get(tenant_id)
        if hasher is None:
            hasher = self._hashers[tenant_id] = IpHasher(self._secret, tenant_id)
        classify = self._filter.classifier.classify
        rows: list[_Row] = []
        for hit in hits:
            try:
                listener_id, household_id = hasher.ids(hit.client_ip, hit.user_agent)
            except InvalidIpError:
                continue
            reason = prefix_filter_reason(hit, self._filter)
            episode = episodes.get(hit.media_url)
            app = device_class = ""
            if reason is None and episode is not None:
                info = classify(hit.user_agent, hit.referer)
                app = "" if info.app == UNKNOWN else info.app
                device_class = info.device_class.value
                device_class = "" if device_class == "unknown" else device_class
            rows.append(
                _Row(
                    hit,
                    listener_id,
                    household_id,
                    reason.value if reason is not None else "",
                    _EPOCH + dt.timedelta(days=window_day(hit.time_us)),
                    episode,
                    app,
                    device_class,
                )
            )
        return rows


@dataclass(frozen=True, slots=True)
class _Row:
    hit: PrefixHit
    listener_id: bytes
    household_id: bytes
    filter_reason: str
    day: dt.date
    # None: the media URL matches no episode of the tenant.
    episode: Episode | None
    # As the cubes store them ('' for unknown); set only where the row may count.
    app: str
    device_class: str

    @property
    def time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.hit.time_us / 1_000_000, dt.UTC)

    @property
    def hour(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.hit.time_us // HOUR_US * HOUR_US / 1_000_000, dt.UTC)


async def _store(conn: asyncpg.Connection, *, tenant_id: uuid.UUID, rows: list[_Row]) -> int:
    """Stores new requests (a resent request id is a duplicate), counts the first
    countable one of each listener, episode and UTC day, and keeps the prefix cubes
    (downloads, funnel) in the same transaction."""
    if not rows:
        return 0
    inserted = await conn.fetch(
        """
        INSERT INTO prefix_requests (tenant_id, request_id, request_time, media_url,
            media_key, listener_id, household_id, user_agent, referer, method,
            range_header, status, filter_reason, episode_id, podcast_id)
        SELECT $1, r.request_id, r.request_time, r.media_url, r.media_key, r.listener_id,
            r.household_id, r.user_agent, r.referer, r.method, r.range_header, r.status,
            r.filter_reason, r.episode_id, r.podcast_id
        FROM unnest($2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bytea[],
            $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[],
            $13::text[], $14::uuid[], $15::uuid[])
            AS r(request_id, request_time, media_url, media_key, listener_id,
                household_id, user_agent, referer, method, range_header, status,
                filter_reason, episode_id, podcast_id)
        ON CONFLICT (tenant_id, request_id) DO NOTHING
        RETURNING request_id
        """,
        tenant_id,
        [row.hit.request_id for row in rows],
        [row.time for row in rows],
        [row.hit.media_url for row in rows],
        [row.hit.media_key for row in rows],
        [row.listener_id for row in rows],
        [row.household_id for row in rows],
        [row.hit.user_agent for row in rows],
        [row.hit.referer for row in rows],
        [row.hit.method for row in rows],
        [row.hit.range_header for row in rows],
        [row.hit.status for row in rows],
        [row.filter_reason for row in rows],
        [_episode_id(row) for row in rows],
        [_podcast_id(row) for row in rows],
    )
    new = {record["request_id"] for record in inserted}
    countable = [
        row
        for row in rows
        if row.hit.request_id in new and not row.filter_reason and row.episode is not None
    ]
    counted: set[str] = set()
    if countable:
        # In time order, so that the earliest request of a batch is the download.
        countable.sort(key=lambda row: row.hit.time_us)
        records = await conn.fetch(
            """
            INSERT INTO prefix_downloads (tenant_id, day, media_key, listener_id, request_id,
                episode_id, podcast_id, download_time)
            SELECT $1, r.day, r.media_key, r.listener_id, r.request_id, r.episode_id,
                r.podcast_id, r.download_time
            FROM unnest($2::date[], $3::text[], $4::bytea[], $5::text[], $6::uuid[],
                $7::uuid[], $8::timestamptz[])
                WITH ORDINALITY AS r(day, media_key, listener_id, request_id, episode_id,
                    podcast_id, download_time, position)
            ORDER BY r.position
            ON CONFLICT DO NOTHING
            RETURNING request_id
            """,
            tenant_id,
            [row.day for row in countable],
            [row.hit.media_key for row in countable],
            [row.listener_id for row in countable],
            [row.hit.request_id for row in countable],
            [_episode_id(row) for row in countable],
            [_podcast_id(row) for row in countable],
            [row.time for row in countable],
        )
        counted = {record["request_id"] for record in records}
    await _roll_up(conn, tenant_id, rows, new, counted)
    return len(counted)


def _episode_id(row: _Row) -> uuid.UUID | None:
    return uuid.UUID(row.episode.episode_id) if row.episode is not None else None


def _podcast_id(row: _Row) -> uuid.UUID | None:
    return uuid.UUID(row.episode.podcast_id) if row.episode is not None else None


def _outcome(row: _Row, new: set[str], counted: set[str]) -> tuple[str, str]:
    """Where a request ended up in the prefix funnel: (outcome, filter reason)."""
    request_id = row.hit.request_id
    if request_id not in new:
        return "duplicate", ""
    if row.filter_reason:
        return "filtered", row.filter_reason
    if row.episode is None:
        return "unmatched", ""
    return ("download", "") if request_id in counted else ("window_repeat", "")


async def _roll_up(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    rows: Sequence[_Row],
    new: set[str],
    counted: set[str],
) -> None:
    funnel: Counter[tuple[dt.datetime, uuid.UUID, str, str, uuid.UUID]] = Counter()
    downloads: Counter[tuple[dt.datetime, uuid.UUID, str, str, uuid.UUID]] = Counter()
    for row in rows:
        outcome, reason = _outcome(row, new, counted)
        episode_id = _episode_id(row) or NO_EPISODE
        podcast_id = _podcast_id(row) or NO_EPISODE
        funnel[(row.hour, episode_id, outcome, reason, podcast_id)] += 1
        if outcome == "download":
            downloads[(row.hour, episode_id, row.app, row.device_class, podcast_id)] += 1
    # Sorted, so that concurrent streams take the rows' locks in one order.
    funnel_keys = sorted(funnel)
    await conn.execute(
        """
        INSERT INTO prefix_funnel_hourly AS f (tenant_id, hour, episode_id, outcome, reason,
            podcast_id, requests)
        SELECT $1, r.* FROM unnest($2::timestamptz[], $3::uuid[], $4::text[], $5::text[],
            $6::uuid[], $7::int8[]) AS r
        ON CONFLICT (tenant_id, hour, episode_id, outcome, reason)
            DO UPDATE SET requests = f.requests + EXCLUDED.requests
        """,
        tenant_id,
        *_columns(funnel_keys, 5),
        [funnel[key] for key in funnel_keys],
    )
    if not downloads:
        return
    download_keys = sorted(downloads)
    await conn.execute(
        """
        INSERT INTO prefix_rollup_hourly AS r (tenant_id, hour, episode_id, app, device_class,
            country_code, podcast_id, downloads)
        SELECT $1, d.hour, d.episode_id, d.app, d.device_class, '', d.podcast_id, d.downloads
        FROM unnest($2::timestamptz[], $3::uuid[], $4::text[], $5::text[], $6::uuid[],
            $7::int8[]) AS d(hour, episode_id, app, device_class, podcast_id, downloads)
        ON CONFLICT (tenant_id, hour, episode_id, app, device_class, country_code)
            DO UPDATE SET downloads = r.downloads + EXCLUDED.downloads
        """,
        tenant_id,
        *_columns(download_keys, 5),
        [downloads[key] for key in download_keys],
    )
    # Cached reports are reused only while this version is unchanged
    # (services.analytics.queries.report_cache).
    await conn.execute(
        """
        INSERT INTO counting_versions AS v (tenant_id, version) VALUES ($1, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1
        """,
        tenant_id,
    )


def _columns(keys: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[key[i] for key in keys] for i in range(width)]


class AccessLogReceiver:
    """The AccessLogService servicer (registered by its generated adder)."""

    def __init__(self, recorder: PrefixRecorder) -> None:
        self._recorder = recorder

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[Any],
        context: aio.ServicerContext[
            als_pb2.StreamAccessLogsMessage, als_pb2.StreamAccessLogsResponse
        ],
    ) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            hits = [
                hit
                for entry in message.http_logs.log_entry
                if (hit := prefix_hit(entry)) is not None
            ]
            if not hits:
                continue
            try:
                await self._recorder.record(hits)
            except DomainError as error:
                # Envoy does not resend, and ending the stream would only lose the
                # batches after this one too.
                log.warning("prefix requests lost: %d (%s)", len(hits), error)
        return als_pb2.StreamAccessLogsResponse()


def register(server: aio.Server, recorder: PrefixRecorder) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(recorder), server)
