"""What analytics asks other services: the tenant's settings and quotas (tenant
service) and episodes' release times (catalog). Episodes for ingestion are resolved in
`ingest.episodes`.

Catalog calls forward the caller's own credential, so the catalog applies its own
permission rules and row-level security to exactly the caller.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
from grpc import aio
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from services.analytics.counting.windows import CountingWindow
from services.shared.errors import ResourceExhausted
from services.shared.peers import forwarded, peer_error
from services.shared.protobuf import instant
from services.shared.timezones import UTC_NAMES, is_time_zone

log = logging.getLogger("podmesh.analytics.peers")

Metadata = tuple[tuple[str, str], ...]
PEER_TIMEOUT_S = 5.0
# The catalog's page size limit; the podcast median reads at most this many pages.
_EPISODE_PAGE = 200
_MAX_EPISODE_PAGES = 5


@dataclass(frozen=True)
class TenantClock:
    """The tenant settings that bucket and window arithmetic depend on."""

    time_zone: str
    counting_window: CountingWindow

    @property
    def counting_time_zone(self) -> str:
        """The zone of the counting window's calendar days; '' for the rolling window."""
        if self.counting_window is CountingWindow.TENANT_DAY:
            return self.time_zone
        if self.counting_window is CountingWindow.ROLLING_24H:
            return ""
        return "UTC"

    @property
    def day_zone(self) -> str:
        """The zone whose calendar day 'today' means for live counters and windows."""
        return self.counting_time_zone or "UTC"

    def cube_zone(self, zone_name: str) -> str | None:
        """Which daily cube ('UTC' or 'local') has days of `zone_name`, if any."""
        if zone_name in UTC_NAMES:
            return "UTC"
        if zone_name == self.time_zone:
            return "UTC" if self.time_zone in UTC_NAMES else "local"
        return None


class ClockSource(Protocol):
    async def clock(self, tenant_id: uuid.UUID) -> TenantClock: ...


@dataclass(frozen=True, slots=True)
class TenantProfile:
    """The tenant settings and limits analytics applies."""

    time_zone: str
    counting_window: CountingWindow
    monthly_events: int
    requests_per_second: int
    # From the tenant's billing status: why ingestion is stopped, if it is.
    ingestion_stop_reason: str = ""
    ingestion_stop_message: str = ""

    @property
    def clock(self) -> TenantClock:
        return TenantClock(time_zone=self.time_zone, counting_window=self.counting_window)

    def require_ingestion(self) -> None:
        """Ingestion stops when the subscription is inactive; reads never do."""
        if self.ingestion_stop_reason:
            raise ResourceExhausted(self.ingestion_stop_message, reason=self.ingestion_stop_reason)


def _profile(tenant: tenant_pb2.Tenant) -> TenantProfile:
    window = tenant.settings.counting_window
    zone = tenant.settings.time_zone
    # The tenant service resolves plan and overrides into the quotas in force, and
    # the plan's state into whether ingestion runs; nothing is recomputed here.
    billing = tenant.billing
    stopped = tenant.HasField("billing") and not billing.ingestion_allowed
    return TenantProfile(
        # Names refused since ('localtime', 'Factory') may have been saved before: they
        # read as UTC rather than failing every report of the tenant.
        time_zone=zone if is_time_zone(zone) else "UTC",
        counting_window=CountingWindow(window) if window else CountingWindow.UTC_DAY,
        monthly_events=tenant.effective_quota.monthly_events,
        requests_per_second=tenant.effective_quota.api_key_requests_per_second,
        ingestion_stop_reason=billing.reason if stopped else "",
        ingestion_stop_message=billing.message if stopped else "",
    )


class TenantProfiles:
    """Tenant settings and quotas from the tenant service, cached per tenant for `ttl_s`.

    Asked with the platform administrator's token, not the caller's: an ingest-only
    key may not read its tenant (GetTenant needs tenant.read), yet every batch it
    sends is counted by its tenant's window and held to its tenant's quota; and every
    caller allowed to read a tenant's analytics sees them in the tenant's time zone.
    A stale entry is used while the tenant service is unreachable, so ingestion and
    dashboards ride out its restarts.
    """

    def __init__(self, channel: aio.Channel, admin_token: str, ttl_s: float) -> None:
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._credentials: Metadata = (("authorization", f"Bearer {admin_token}"),)
        self._ttl_s = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, TenantProfile]] = {}

    async def get(self, tenant_id: uuid.UUID) -> TenantProfile:
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._stub.GetTenant(
                tenant_pb2.GetTenantRequest(tenant_id=str(tenant_id)),
                metadata=forwarded(self._credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if cached is not None and error.code() == grpc.StatusCode.UNAVAILABLE:
                log.warning("tenant service unavailable: using cached settings")
                return cached[1]
            raise peer_error(error, "tenant", not_found=("tenant", str(tenant_id))) from None
        profile = _profile(response.tenant)
        self._cache[tenant_id] = (now + self._ttl_s, profile)
        return profile

    async def clock(self, tenant_id: uuid.UUID) -> TenantClock:
        return (await self.get(tenant_id)).clock


@dataclass(frozen=True)
class EpisodeRelease:
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    publish_time: datetime | None


def _release(episode: catalog_pb2.Episode) -> EpisodeRelease:
    return EpisodeRelease(
        episode_id=uuid.UUID(episode.id),
        podcast_id=uuid.UUID(episode.podcast_id),
        publish_time=instant(episode, "publish_time"),
    )


class CatalogReleases:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)

    async def episode(self, episode_id: uuid.UUID, credentials: Metadata) -> EpisodeRelease:
        try:
            response = await self._stub.GetEpisode(
                catalog_pb2.GetEpisodeRequest(episode_id=str(episode_id)),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "catalog", not_found=("episode", str(episode_id))) from None
        return _release(response.episode)

    async def published_before(
        self, podcast_id: uuid.UUID, before: datetime, credentials: Metadata
    ) -> list[EpisodeRelease]:
        """The podcast's episodes published before `before`, newest first (at most 1,000)."""
        end = catalog_pb2.ListEpisodesRequest().publish_end_time
        end.FromDatetime(before.astimezone(UTC))
        releases: list[EpisodeRelease] = []
        token = ""
        for _ in range(_MAX_EPISODE_PAGES):
            try:
                response = await self._stub.ListEpisodes(
                    catalog_pb2.ListEpisodesRequest(
                        podcast_id=str(podcast_id),
                        page_size=_EPISODE_PAGE,
                        page_token=token,
                        publish_end_time=end,
                    ),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise peer_error(error, "catalog", not_found=("podcast", str(podcast_id))) from None
            releases.extend(_release(e) for e in response.episodes)
            token = response.next_page_token
            if not token:
                break
        return releases
