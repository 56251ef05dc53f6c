"""Maps CatalogService protobuf messages to catalog calls and back; nothing else."""

from __future__ import annotations

import enum
import uuid
from typing import Any, TypeVar

from podmesh.catalog.v1 import catalog_pb2 as pb
from podmesh.catalog.v1 import catalog_pb2_grpc

from services.catalog.catalog import Catalog, FeedSource, ImportResult
from services.catalog.domain import (
    AdInsertion,
    AdPosition,
    AdSlot,
    Episode,
    EpisodeFilter,
    EpisodeMedia,
    EpisodeType,
    Podcast,
    PodcastFilter,
    PodcastType,
)
from services.shared.context import current_principal, current_tenant_id
from services.shared.errors import InvalidArgument, PermissionDenied
from services.shared.measurement_prefix import prefix_id
from services.shared.peers import credentials
from services.shared.protobuf import duration, from_timestamp, instant, milliseconds, timestamp
from services.shared.validation import Violations, page_size, parse_uuid

E = TypeVar("E", bound=enum.IntEnum)


def _enum(kind: type[E], value: int, field: str, v: Violations) -> E:
    try:
        return kind(value)
    except ValueError:
        v.add(field, f"has no value {value}")
        return kind(0)


def _uuid(value: str, field: str, v: Violations) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        v.add(field, "must be a UUID")
        return None


def podcast_to_pb(podcast: Podcast) -> pb.Podcast:
    return pb.Podcast(
        id=str(podcast.id),
        title=podcast.title,
        author=podcast.author,
        description=podcast.description,
        categories=podcast.categories,
        language=podcast.language,
        feed_url=podcast.feed_url,
        artwork_url=podcast.artwork_url,
        website_url=podcast.website_url,
        owner_name=podcast.owner_name,
        owner_email=podcast.owner_email,
        explicit=podcast.explicit,
        podcast_type=int(podcast.podcast_type),  # type: ignore[arg-type]
        podcast_guid=podcast.podcast_guid,
        keywords=[pb.Keyword(text=k.text, weight=k.weight) for k in podcast.keywords],
        episode_count=podcast.episode_count,
        latest_publish_time=timestamp(podcast.latest_publish_at),
        last_import_time=timestamp(podcast.last_import_at),
        create_time=timestamp(podcast.created_at),
        update_time=timestamp(podcast.updated_at),
        # Every caller answers an RPC, in the tenant the podcast belongs to.
        measurement_prefix=prefix_id(current_tenant_id()),
    )


def podcast_from_pb(message: pb.Podcast, *, id_field: str | None = None) -> Podcast:
    v = Violations()
    # New podcasts get their id from the catalog; updates name theirs.
    podcast_id = _uuid(message.id, id_field, v) if id_field else uuid.UUID(int=0)
    podcast_type = _enum(PodcastType, message.podcast_type, "podcast.podcast_type", v)
    v.raise_if_any()
    assert podcast_id is not None
    return Podcast(
        id=podcast_id,
        title=message.title,
        author=message.author,
        description=message.description,
        categories=tuple(message.categories),
        language=message.language,
        feed_url=message.feed_url,
        artwork_url=message.artwork_url,
        website_url=message.website_url,
        owner_name=message.owner_name,
        owner_email=message.owner_email,
        explicit=message.explicit,
        podcast_type=podcast_type,
        podcast_guid=message.podcast_guid,
    )


def slot_to_pb(slot: AdSlot) -> pb.AdSlot:
    return pb.AdSlot(
        id=str(slot.id) if slot.id else "",
        position=int(slot.position),  # type: ignore[arg-type]
        start_offset=duration(slot.start_offset_ms),
        duration=duration(slot.duration_ms),
        start_byte=slot.start_byte,
        end_byte=slot.end_byte,
        byte_range_derived=slot.byte_range_derived,
        insertion=int(slot.insertion),  # type: ignore[arg-type]
    )


def _slot_from_pb(message: pb.AdSlot, field: str, v: Violations) -> AdSlot:
    slot_id = _uuid(message.id, f"{field}.id", v) if message.id else None
    for name in ("start_offset", "duration"):
        v.check(message.HasField(name), f"{field}.{name}", "is required")
    return AdSlot(
        id=slot_id,
        position=_enum(AdPosition, message.position, f"{field}.position", v),
        insertion=_enum(AdInsertion, message.insertion, f"{field}.insertion", v),
        start_offset_ms=milliseconds(message.start_offset),
        duration_ms=milliseconds(message.duration),
        given_start_byte=message.start_byte if message.HasField("start_byte") else None,
        given_end_byte=message.end_byte if message.HasField("end_byte") else None,
    )


def episode_to_pb(episode: Episode) -> pb.Episode:
    return pb.Episode(
        id=str(episode.id),
        podcast_id=str(episode.podcast_id),
        guid=episode.guid,
        title=episode.title,
        description=episode.description,
        publish_time=timestamp(episode.publish_at),
        media_url=episode.media_url,
        media_type=episode.media_type,
        media_size_bytes=episode.media_size_bytes,
        duration=duration(episode.duration_ms),
        bitrate_bps=episode.bitrate_bps,
        bitrate_derived=episode.bitrate_derived,
        id3_size_bytes=episode.id3_size_bytes,
        season_number=episode.season_number,
        episode_number=episode.episode_number,
        episode_type=int(episode.episode_type),  # type: ignore[arg-type]
        explicit=episode.explicit,
        artwork_url=episode.artwork_url,
        transcript_url=episode.transcript_url,
        has_transcript=episode.has_transcript,
        ad_slots=[slot_to_pb(s) for s in episode.ad_slots],
        create_time=timestamp(episode.created_at),
        update_time=timestamp(episode.updated_at),
    )


def episode_from_pb(
    message: pb.Episode, *, id_field: str | None = None, prefix: str = "episode"
) -> Episode:
    v = Violations()
    episode_id = _uuid(message.id, id_field, v) if id_field else uuid.UUID(int=0)
    episode_type = _enum(EpisodeType, message.episode_type, f"{prefix}.episode_type", v)
    slots = tuple(
        _slot_from_pb(s, f"{prefix}.ad_slots[{i}]", v) for i, s in enumerate(message.ad_slots)
    )
    v.raise_if_any()
    assert episode_id is not None
    return Episode(
        id=episode_id,
        podcast_id=uuid.UUID(int=0),
        guid=message.guid,
        title=message.title,
        description=message.description,
        publish_at=instant(message, "publish_time"),
        media_url=message.media_url,
        media_type=message.media_type,
        media_size_bytes=message.media_size_bytes,
        duration_ms=milliseconds(message.duration) if message.HasField("duration") else None,
        bitrate_bps=message.bitrate_bps,
        id3_size_bytes=message.id3_size_bytes if message.HasField("id3_size_bytes") else None,
        season_number=message.season_number,
        episode_number=message.episode_number,
        episode_type=episode_type,
        explicit=message.explicit,
        artwork_url=message.artwork_url,
        transcript=message.transcript,
        transcript_url=message.transcript_url,
        ad_slots=slots,
    )


def media_to_pb(media: EpisodeMedia) -> pb.EpisodeMedia:
    return pb.EpisodeMedia(
        episode_id=str(media.episode_id),
        podcast_id=str(media.podcast_id),
        media_url=media.media_url,
        normalized_media_url=media.normalized_media_url,
        media_size_bytes=media.media_size_bytes,
        id3_size_bytes=media.id3_size_bytes,
        bitrate_bps=media.bitrate_bps,
        duration=duration(media.duration_ms),
        publish_time=timestamp(media.publish_at),
        ad_slots=[slot_to_pb(s) for s in media.ad_slots],
        update_time=timestamp(media.updated_at),
    )


def import_to_pb(result: ImportResult) -> pb.ImportFeedResponse:
    return pb.ImportFeedResponse(
        podcast=podcast_to_pb(result.podcast),
        podcast_created=result.podcast_created,
        created_episode_count=result.created,
        updated_episode_count=result.updated,
        unchanged_episode_count=result.unchanged,
        missing_episode_count=result.missing,
        skipped_item_count=result.skipped,
        warnings=[pb.FeedWarning(item=w.item, message=w.message) for w in result.warnings],
    )


def _optional_uuid(value: str, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field) if value else None


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def CreatePodcast(
        self, request: pb.CreatePodcastRequest, context: Any
    ) -> pb.CreatePodcastResponse:
        podcast = await self._catalog.create_podcast(
            current_tenant_id(), podcast_from_pb(request.podcast), credentials(context)
        )
        return pb.CreatePodcastResponse(podcast=podcast_to_pb(podcast))

    async def GetPodcast(
        self, request: pb.GetPodcastRequest, context: Any
    ) -> pb.GetPodcastResponse:
        podcast = await self._catalog.get_podcast(
            current_tenant_id(), parse_uuid(request.podcast_id, "podcast_id")
        )
        return pb.GetPodcastResponse(podcast=podcast_to_pb(podcast))

    async def ListPodcasts(
        self, request: pb.ListPodcastsRequest, context: Any
    ) -> pb.ListPodcastsResponse:
        where = PodcastFilter(
            category=request.category.strip(),
            language=request.language.strip(),
            feed_url=request.feed_url.strip(),
        )
        podcasts, token = await self._catalog.list_podcasts(
            current_tenant_id(), where, page_size(request.page_size), request.page_token
        )
        return pb.ListPodcastsResponse(
            podcasts=[podcast_to_pb(p) for p in podcasts], next_page_token=token
        )

    async def UpdatePodcast(
        self, request: pb.UpdatePodcastRequest, context: Any
    ) -> pb.UpdatePodcastResponse:
        podcast = await self._catalog.update_podcast(
            current_tenant_id(),
            podcast_from_pb(request.podcast, id_field="podcast.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdatePodcastResponse(podcast=podcast_to_pb(podcast))

    async def DeletePodcast(
        self, request: pb.DeletePodcastRequest, context: Any
    ) -> pb.DeletePodcastResponse:
        await self._catalog.delete_podcast(
            current_tenant_id(), parse_uuid(request.podcast_id, "podcast_id"), request.force
        )
        return pb.DeletePodcastResponse()

    async def CreateEpisode(
        self, request: pb.CreateEpisodeRequest, context: Any
    ) -> pb.CreateEpisodeResponse:
        episode = await self._catalog.create_episode(
            current_tenant_id(),
            parse_uuid(request.podcast_id, "podcast_id"),
            episode_from_pb(request.episode),
        )
        return pb.CreateEpisodeResponse(episode=episode_to_pb(episode))

    async def GetEpisode(
        self, request: pb.GetEpisodeRequest, context: Any
    ) -> pb.GetEpisodeResponse:
        episode = await self._catalog.get_episode(
            current_tenant_id(), parse_uuid(request.episode_id, "episode_id")
        )
        return pb.GetEpisodeResponse(episode=episode_to_pb(episode))

    async def BatchGetEpisodes(
        self, request: pb.BatchGetEpisodesRequest, context: Any
    ) -> pb.BatchGetEpisodesResponse:
        v = Violations()
        ids = [_uuid(raw, f"episode_ids[{i}]", v) for i, raw in enumerate(request.episode_ids)]
        v.raise_if_any()
        episodes = await self._catalog.batch_get_episodes(
            current_tenant_id(), [i for i in ids if i is not None]
        )
        return pb.BatchGetEpisodesResponse(episodes=[episode_to_pb(e) for e in episodes])

    async def ListEpisodes(
        self, request: pb.ListEpisodesRequest, context: Any
    ) -> pb.ListEpisodesResponse:
        v = Violations()
        episode_type = _enum(EpisodeType, request.episode_type, "episode_type", v)
        v.raise_if_any()
        where = EpisodeFilter(
            publish_start=from_timestamp(request.publish_start_time)
            if request.HasField("publish_start_time")
            else None,
            publish_end=from_timestamp(request.publish_end_time)
            if request.HasField("publish_end_time")
            else None,
            episode_type=episode_type,
            season_number=request.season_number,
        )
        episodes, token = await self._catalog.list_episodes(
            current_tenant_id(),
            parse_uuid(request.podcast_id, "podcast_id"),
            where,
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListEpisodesResponse(
            episodes=[episode_to_pb(e) for e in episodes], next_page_token=token
        )

    async def UpdateEpisode(
        self, request: pb.UpdateEpisodeRequest, context: Any
    ) -> pb.UpdateEpisodeResponse:
        episode = await self._catalog.update_episode(
            current_tenant_id(),
            episode_from_pb(request.episode, id_field="episode.id"),
            list(request.update_mask.paths),
        )
        return pb.UpdateEpisodeResponse(episode=episode_to_pb(episode))

    async def DeleteEpisode(
        self, request: pb.DeleteEpisodeRequest, context: Any
    ) -> pb.DeleteEpisodeResponse:
        await self._catalog.delete_episode(
            current_tenant_id(), parse_uuid(request.episode_id, "episode_id")
        )
        return pb.DeleteEpisodeResponse()

    async def ResolveEpisode(
        self, request: pb.ResolveEpisodeRequest, context: Any
    ) -> pb.ResolveEpisodeResponse:
        key = request.WhichOneof("key")
        if key is None:
            raise InvalidArgument.field("key", "set episode_id or media_url")
        episode_id = parse_uuid(request.episode_id, "episode_id") if key == "episode_id" else None
        media = await self._catalog.resolve_episode(
            current_tenant_id(), episode_id, request.media_url
        )
        return pb.ResolveEpisodeResponse(episode_media=media_to_pb(media))

    async def BatchResolveEpisodes(
        self, request: pb.BatchResolveEpisodesRequest, context: Any
    ) -> pb.BatchResolveEpisodesResponse:
        by_id, by_url = await self._catalog.batch_resolve_episodes(
            _resolving_tenant(request.tenant_id),
            list(request.episode_ids),
            list(request.media_urls),
        )
        return pb.BatchResolveEpisodesResponse(
            by_episode_id={k: media_to_pb(m) for k, m in by_id.items()},
            by_media_url={k: media_to_pb(m) for k, m in by_url.items()},
        )

    async def ImportFeed(
        self, request: pb.ImportFeedRequest, context: Any
    ) -> pb.ImportFeedResponse:
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument.field("source", "set feed_url or feed_body")
        result = await self._catalog.import_feed(
            current_tenant_id(),
            FeedSource(url=request.feed_url.strip())
            if source == "feed_url"
            else FeedSource(body=request.feed_body),
            _optional_uuid(request.podcast_id, "podcast_id"),
            request.validate_only,
            credentials(context),
        )
        return import_to_pb(result)

    async def SearchPodcasts(
        self, request: pb.SearchPodcastsRequest, context: Any
    ) -> pb.SearchPodcastsResponse:
        where = PodcastFilter(category=request.category.strip(), language=request.language.strip())
        hits, token = await self._catalog.search_podcasts(
            current_tenant_id(),
            request.query,
            where,
            page_size(request.page_size),
            request.page_token,
        )
        return pb.SearchPodcastsResponse(
            results=[
                pb.PodcastSearchResult(podcast=podcast_to_pb(h.item), relevance_score=h.score)
                for h in hits
            ],
            next_page_token=token,
        )

    async def SearchEpisodes(
        self, request: pb.SearchEpisodesRequest, context: Any
    ) -> pb.SearchEpisodesResponse:
        hits, token = await self._catalog.search_episodes(
            current_tenant_id(),
            request.query,
            _optional_uuid(request.podcast_id, "podcast_id"),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.SearchEpisodesResponse(
            results=[
                pb.EpisodeSearchResult(episode=episode_to_pb(h.item), relevance_score=h.score)
                for h in hits
            ],
            next_page_token=token,
        )


def _resolving_tenant(requested: str) -> uuid.UUID:
    """The caller's own tenant, or the one the platform administrator names: analytics
    resolves measurement prefix requests for the tenant their prefix names, and the
    catalog then reads in that tenant's transaction (row-level security) as for any
    other caller."""
    if not requested:
        return current_tenant_id()
    if not current_principal().is_platform_admin:
        raise PermissionDenied(
            "only the platform administrator names a tenant: leave tenant_id empty",
            reason="TENANT_ID_NOT_ALLOWED",
        )
    return parse_uuid(requested, "tenant_id")
