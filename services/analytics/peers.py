"""What analytics asks other services: the tenant's time zone and counting window
(tenant service) and episodes' release times (catalog), as the caller.

Calls forward the caller's own credential, so a peer applies its own permission rules
and row-level security to exactly the caller; analytics holds no credential of its own.
"""

from __future__ import annotations

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
from services.analytics.reports import TenantClock
from services.shared.peers import forwarded, peer_error

Metadata = tuple[tuple[str, str], ...]
# Headers that carry a credential (see services.shared.interceptors).
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
PEER_TIMEOUT_S = 3.0
# The catalog's page size limit; the podcast median reads at most this many pages.
_EPISODE_PAGE = 200
_MAX_EPISODE_PAGES = 5


class ClockSource(Protocol):
    async def get(self, tenant_id: uuid.UUID, credentials: Metadata) -> TenantClock: ...


class TenantClocks:
    """The tenant's clock settings, cached per tenant for `ttl_s`.

    Cached by tenant, not by credential: every caller of a tenant sees the same settings,
    and anyone allowed to read analytics may read them. A stale entry is served while the
    tenant service is unreachable, so dashboards keep working through its restarts.
    """

    def __init__(self, channel: aio.Channel, ttl_s: float = 30.0) -> None:
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._ttl_s = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, TenantClock]] = {}

    async def get(self, tenant_id: uuid.UUID, credentials: Metadata) -> TenantClock:
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._stub.GetTenant(
                tenant_pb2.GetTenantRequest(tenant_id=str(tenant_id)),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if cached is not None and error.code() == grpc.StatusCode.UNAVAILABLE:
                return cached[1]
            raise peer_error(error, "tenant", not_found=("tenant", str(tenant_id))) from None
        settings = response.tenant.settings
        clock = TenantClock(
            time_zone=settings.time_zone or "UTC",
            counting_window=CountingWindow(settings.counting_window or CountingWindow.UTC_DAY),
        )
        self._cache[tenant_id] = (now + self._ttl_s, clock)
        return clock


@dataclass(frozen=True)
class EpisodeRelease:
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    publish_time: datetime | None


def _release(episode: catalog_pb2.Episode) -> EpisodeRelease:
    return EpisodeRelease(
        episode_id=uuid.UUID(episode.id),
        podcast_id=uuid.UUID(episode.podcast_id),
        publish_time=(
            episode.publish_time.ToDatetime(tzinfo=UTC)
            if episode.HasField("publish_time")
            else None
        ),
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
