"""What ingestion asks the catalog, cached: episodes by id or media URL with the media
facts counting needs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass

import grpc
from grpc import aio
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc

from services.analytics.counting import AdInsertion, AdSlot, EpisodeMedia
from services.analytics.ingest.records import Episode
from services.analytics.peers import PEER_TIMEOUT_S, Metadata
from services.shared.peers import forwarded, peer_error

# BatchResolveEpisodes takes at most this many ids and URLs together.
RESOLVE_CHUNK = 500
# A tenant's cache is dropped whole when it grows past this: simpler than LRU, and a
# tenant with more live episodes than this refills it in a few batches.
MAX_CACHED_PER_TENANT = 50_000


@dataclass(frozen=True, slots=True)
class ResolvedEpisode:
    episode: Episode
    media: EpisodeMedia


@dataclass(frozen=True, slots=True)
class Resolution:
    by_id: dict[str, Episode]
    by_url: dict[str, Episode]
    # Keyed by episode id, for counting.
    media: dict[str, EpisodeMedia]


def episode_media(message: catalog_pb2.EpisodeMedia) -> EpisodeMedia:
    """The catalog's media facts as counting takes them."""
    slots: list[AdSlot] = []
    for slot in message.ad_slots:
        ranged = slot.HasField("start_byte") and slot.HasField("end_byte")
        slots.append(
            AdSlot(
                slot.id,
                AdInsertion.BAKED_IN
                if slot.insertion == catalog_pb2.AD_INSERTION_BAKED_IN
                else AdInsertion.DYNAMIC,
                slot.start_byte if ranged else None,
                slot.end_byte if ranged else None,
            )
        )
    duration = message.duration
    return EpisodeMedia(
        message.episode_id,
        size_bytes=message.media_size_bytes,
        id3_size_bytes=message.id3_size_bytes if message.HasField("id3_size_bytes") else None,
        bitrate_bps=message.bitrate_bps,
        duration_s=duration.seconds + duration.nanos / 1e9
        if message.HasField("duration")
        else None,
        ad_slots=tuple(slots),
    )


def _resolved(message: catalog_pb2.EpisodeMedia) -> ResolvedEpisode:
    return ResolvedEpisode(Episode(message.episode_id, message.podcast_id), episode_media(message))


class EpisodeResolver:
    """Episodes by id or media URL through the catalog's BatchResolveEpisodes.

    Cached per tenant: found episodes for `ttl_s` (a catalog change reaches counting
    within that), unknown ones for `negative_ttl_s` (an episode created a moment ago
    is found soon). One batch costs at most one round trip per 500 misses.

    With `names_tenant`, every request names the tenant it resolves in: for a caller
    acting on tenants rather than in one (the platform administrator), which the
    catalog allows only to that caller.
    """

    def __init__(
        self,
        channel: aio.Channel,
        ttl_s: float,
        negative_ttl_s: float,
        *,
        names_tenant: bool = False,
    ) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._names_tenant = names_tenant
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._cache: dict[uuid.UUID, dict[str, tuple[float, ResolvedEpisode | None]]] = {}

    async def resolve(
        self,
        tenant_id: uuid.UUID,
        episode_ids: Collection[str],
        media_urls: Collection[str],
        credentials: Metadata,
    ) -> Resolution:
        now = time.monotonic()
        cache = self._cache.setdefault(tenant_id, {})
        found: dict[str, ResolvedEpisode | None] = {}
        missing_ids: list[str] = []
        missing_urls: list[str] = []
        for keys, prefix, missing in (
            (episode_ids, "i:", missing_ids),
            (media_urls, "u:", missing_urls),
        ):
            for key in keys:
                cached = cache.get(prefix + key)
                if cached is not None and cached[0] > now:
                    found[prefix + key] = cached[1]
                else:
                    missing.append(key)
        if missing_ids or missing_urls:
            fetched = await self._fetch(tenant_id, missing_ids, missing_urls, credentials)
            if len(cache) + len(fetched) > MAX_CACHED_PER_TENANT:
                cache.clear()
            for key, value in fetched.items():
                ttl = self._ttl_s if value is not None else self._negative_ttl_s
                cache[key] = (now + ttl, value)
            found.update(fetched)
        by_id: dict[str, Episode] = {}
        by_url: dict[str, Episode] = {}
        media: dict[str, EpisodeMedia] = {}
        for key, value in found.items():
            if value is None:
                continue
            (by_id if key.startswith("i:") else by_url)[key[2:]] = value.episode
            media[value.episode.episode_id] = value.media
        return Resolution(by_id, by_url, media)

    async def media(
        self, tenant_id: uuid.UUID, episode_ids: Collection[str], credentials: Metadata
    ) -> dict[str, ResolvedEpisode]:
        """Media facts of episodes by id, straight from the catalog (no cache)."""
        fetched = await self._fetch(tenant_id, list(episode_ids), [], credentials)
        return {key[2:]: value for key, value in fetched.items() if value is not None}

    async def _fetch(
        self, tenant_id: uuid.UUID, ids: list[str], urls: list[str], credentials: Metadata
    ) -> dict[str, ResolvedEpisode | None]:
        keys = [("i:", key) for key in ids] + [("u:", key) for key in urls]
        chunks = [keys[i : i + RESOLVE_CHUNK] for i in range(0, len(keys), RESOLVE_CHUNK)]
        replies = await asyncio.gather(
            *(self._fetch_chunk(tenant_id, chunk, credentials) for chunk in chunks)
        )
        fetched: dict[str, ResolvedEpisode | None] = {}
        for reply in replies:
            fetched.update(reply)
        return fetched

    async def _fetch_chunk(
        self, tenant_id: uuid.UUID, keys: list[tuple[str, str]], credentials: Metadata
    ) -> dict[str, ResolvedEpisode | None]:
        request = catalog_pb2.BatchResolveEpisodesRequest(
            episode_ids=[key for prefix, key in keys if prefix == "i:"],
            media_urls=[key for prefix, key in keys if prefix == "u:"],
            tenant_id=str(tenant_id) if self._names_tenant else "",
        )
        try:
            response = await self._stub.BatchResolveEpisodes(
                request, metadata=forwarded(credentials), timeout=PEER_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "catalog") from None
        result: dict[str, ResolvedEpisode | None] = {prefix + key: None for prefix, key in keys}
        for key, message in response.by_episode_id.items():
            result["i:" + key] = _resolved(message)
        for key, message in response.by_media_url.items():
            result["u:" + key] = _resolved(message)
        return result
