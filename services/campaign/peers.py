"""What the campaign service asks other services, with its caller's credential: the
catalog's episodes, podcasts and ad slots, and analytics' ad deliveries, downloads
and forecasts. The peers apply their own permissions and row-level security."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import grpc
from grpc import aio
from podmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc

from services.campaign.domain import AdPosition, EpisodeFacts, Slot
from services.shared.auth import Permission
from services.shared.change_epochs import ChangeEpochs
from services.shared.context import principal_var
from services.shared.peers import Metadata, forwarded, peer_error
from services.shared.protobuf import from_timestamp, instant

PEER_TIMEOUT_S = 5.0
# How long a remembered catalog answer may be used at most: the bound on how old one can
# be when a change's counter bump was lost (Redis unreachable from the catalog then).
FACTS_MAX_AGE_S = 60.0
MAX_REMEMBERED = 20_000
# Counting a large campaign's deliveries reads a day per placement per day of flight.
DELIVERIES_TIMEOUT_S = 15.0
_PODCAST_PAGE = 200
_MAX_PODCAST_PAGES = 10


@dataclass(frozen=True)
class PodcastSummary:
    id: uuid.UUID
    title: str
    categories: tuple[str, ...]
    explicit: bool
    keywords: tuple[tuple[str, float], ...]
    episode_count: int


def _podcast(p: catalog_pb2.Podcast) -> PodcastSummary:
    return PodcastSummary(
        id=uuid.UUID(p.id),
        title=p.title,
        categories=tuple(p.categories),
        explicit=p.explicit,
        keywords=tuple((k.text, k.weight) for k in p.keywords),
        episode_count=p.episode_count,
    )


@dataclass(frozen=True)
class _PodcastFacts:
    explicit: bool
    categories: tuple[str, ...]


@dataclass(frozen=True)
class _Remembered:
    epoch: int
    at: float
    facts: EpisodeFacts | _PodcastFacts


class Catalog:
    """The catalog's answers a booking needs, remembered per tenant while the catalog's
    change counter (services.shared.change_epochs) reads the same and for at most
    `max_age_s`: a booking then costs no catalog call, and reads what a call would
    have answered. Only answers to a principal that may read the catalog are kept, so
    a remembered one is never shown to a caller the catalog would refuse."""

    def __init__(
        self,
        channel: aio.Channel,
        epochs: ChangeEpochs | None = None,
        *,
        max_age_s: float = FACTS_MAX_AGE_S,
    ) -> None:
        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._epochs = epochs
        self._max_age_s = max_age_s
        self._memory: dict[tuple[uuid.UUID, str, uuid.UUID], _Remembered] = {}

    async def episode(
        self, episode_id: uuid.UUID, credentials: Metadata, *, with_podcast: bool = True
    ) -> EpisodeFacts:
        """The episode and its slots; its podcast's categories and explicit flag only
        `with_podcast` (targeting that needs them), which costs a second call."""
        scope = await self._scope()
        facts = await self._remembered(scope, "episode", episode_id, self._episode, credentials)
        assert isinstance(facts, EpisodeFacts)
        return await self._with_podcast(scope, facts, credentials) if with_podcast else facts

    async def with_podcast(self, episode: EpisodeFacts, credentials: Metadata) -> EpisodeFacts:
        """The episode's facts with its podcast's categories and explicit flag."""
        return await self._with_podcast(await self._scope(), episode, credentials)

    async def _with_podcast(
        self, scope: tuple[uuid.UUID, int] | None, episode: EpisodeFacts, credentials: Metadata
    ) -> EpisodeFacts:
        podcast = await self._remembered(
            scope, "podcast", episode.podcast_id, self._podcast, credentials
        )
        assert isinstance(podcast, _PodcastFacts)
        return replace(
            episode, podcast_explicit=podcast.explicit, podcast_categories=podcast.categories
        )

    async def _scope(self) -> tuple[uuid.UUID, int] | None:
        """The caller's tenant and its catalog counter now; None when nothing may be
        remembered or used (no counters, a caller who may not read the catalog, Redis
        not answering)."""
        principal = principal_var.get()
        if (
            self._epochs is None
            or principal is None
            or principal.tenant_id is None
            or not principal.can(Permission.CATALOG_READ)
        ):
            return None
        epoch = await self._epochs.read(principal.tenant_id)
        return None if epoch is None else (principal.tenant_id, epoch)

    async def _remembered(
        self,
        scope: tuple[uuid.UUID, int] | None,
        kind: str,
        key: uuid.UUID,
        ask: Callable[[uuid.UUID, Metadata], Awaitable[EpisodeFacts | _PodcastFacts]],
        credentials: Metadata,
    ) -> EpisodeFacts | _PodcastFacts:
        if scope is None:
            return await ask(key, credentials)
        tenant_id, epoch = scope
        now = time.monotonic()
        found = self._memory.get((tenant_id, kind, key))
        if found is not None and found.epoch == epoch and now - found.at < self._max_age_s:
            return found.facts
        # The counter was read before asking: a change committed meanwhile moves it on,
        # so this answer is not used once the change is visible.
        facts = await ask(key, credentials)
        if len(self._memory) >= MAX_REMEMBERED:
            self._memory.clear()
        self._memory[(tenant_id, kind, key)] = _Remembered(epoch, now, facts)
        return facts

    async def _episode(self, episode_id: uuid.UUID, credentials: Metadata) -> EpisodeFacts:
        try:
            episode = (
                await self._stub.GetEpisode(
                    catalog_pb2.GetEpisodeRequest(episode_id=str(episode_id)),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            ).episode
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "catalog", not_found=("episode", str(episode_id))) from None
        return EpisodeFacts(
            id=uuid.UUID(episode.id),
            podcast_id=uuid.UUID(episode.podcast_id),
            publish_at=instant(episode, "publish_time"),
            explicit=episode.explicit,
            podcast_explicit=False,
            podcast_categories=(),
            slots=tuple(
                Slot(
                    id=uuid.UUID(s.id),
                    position=AdPosition(s.position),
                    start_byte=s.start_byte,
                    end_byte=s.end_byte,
                )
                for s in episode.ad_slots
            ),
        )

    async def _podcast(self, podcast_id: uuid.UUID, credentials: Metadata) -> _PodcastFacts:
        try:
            podcast = (
                await self._stub.GetPodcast(
                    catalog_pb2.GetPodcastRequest(podcast_id=str(podcast_id)),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            ).podcast
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "catalog", not_found=("podcast", str(podcast_id))) from None
        return _PodcastFacts(explicit=podcast.explicit, categories=tuple(podcast.categories))

    async def podcasts(self, credentials: Metadata) -> list[PodcastSummary]:
        """The tenant's podcasts, by title (at most 2,000)."""
        out: list[PodcastSummary] = []
        token = ""
        for _ in range(_MAX_PODCAST_PAGES):
            try:
                response = await self._stub.ListPodcasts(
                    catalog_pb2.ListPodcastsRequest(page_size=_PODCAST_PAGE, page_token=token),
                    metadata=forwarded(credentials),
                    timeout=PEER_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                raise peer_error(error, "catalog") from None
            out.extend(_podcast(p) for p in response.podcasts)
            token = response.next_page_token
            if not token:
                break
        return out

    async def episodes(
        self, podcast_id: uuid.UUID, credentials: Metadata, limit: int = 200
    ) -> list[EpisodeFacts]:
        """The podcast's newest episodes (one page), without podcast facts."""
        try:
            response = await self._stub.ListEpisodes(
                catalog_pb2.ListEpisodesRequest(podcast_id=str(podcast_id), page_size=limit),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "catalog", not_found=("podcast", str(podcast_id))) from None
        return [
            EpisodeFacts(
                id=uuid.UUID(e.id),
                podcast_id=podcast_id,
                publish_at=instant(e, "publish_time"),
                explicit=e.explicit,
                podcast_explicit=False,
                podcast_categories=(),
                slots=tuple(
                    Slot(uuid.UUID(s.id), AdPosition(s.position), s.start_byte, s.end_byte)
                    for s in e.ad_slots
                ),
            )
            for e in response.episodes
        ]


@dataclass(frozen=True)
class SlotRange:
    ad_slot_id: uuid.UUID
    episode_id: uuid.UUID
    start: datetime
    end: datetime
    group_key: str


@dataclass(frozen=True)
class Deliveries:
    # Per group key: (day start, ads delivered) for days with deliveries.
    days: dict[str, list[tuple[datetime, int]]]
    time_zone: str
    complete_until: datetime


class Analytics:
    def __init__(self, channel: aio.Channel) -> None:
        self._stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)

    async def ad_deliveries(self, ranges: Sequence[SlotRange], credentials: Metadata) -> Deliveries:
        request = analytics_pb2.CountAdDeliveriesRequest()
        for r in ranges:
            item = request.ranges.add(
                ad_slot_id=str(r.ad_slot_id), episode_id=str(r.episode_id), group_key=r.group_key
            )
            item.start_time.FromDatetime(r.start.astimezone(UTC))
            item.end_time.FromDatetime(r.end.astimezone(UTC))
        try:
            response = await self._stub.CountAdDeliveries(
                request, metadata=forwarded(credentials), timeout=DELIVERIES_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "analytics") from None
        # Ranges share their days: each day is converted once.
        days: dict[int, datetime] = {}
        out = {}
        for group in response.groups:
            counted = []
            for d in group.days:
                seconds = d.day_start_time.seconds
                day = days.get(seconds)
                if day is None:
                    day = days[seconds] = datetime.fromtimestamp(seconds, UTC)
                counted.append((day, d.ads_delivered))
            out[group.group_key] = counted
        return Deliveries(
            days=out,
            time_zone=response.time_zone or "UTC",
            complete_until=from_timestamp(response.complete_until_time),
        )

    async def daily_downloads(
        self, podcast_id: uuid.UUID, start: datetime, end: datetime, credentials: Metadata
    ) -> list[int]:
        """Downloads per day of the podcast over [start, end), oldest first."""
        request = analytics_pb2.QueryMetricsRequest(
            podcast_id=str(podcast_id),
            granularity=analytics_pb2.GRANULARITY_DAY,
            metrics=[analytics_pb2.METRIC_DOWNLOADS],
        )
        request.start_time.FromDatetime(start.astimezone(UTC))
        request.end_time.FromDatetime(end.astimezone(UTC))
        try:
            response = await self._stub.QueryMetrics(
                request, metadata=forwarded(credentials), timeout=PEER_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "analytics", not_found=("podcast", str(podcast_id))) from None
        return [p.downloads for p in response.points]

    async def forecast_downloads(
        self, podcast_id: uuid.UUID, days: int, credentials: Metadata
    ) -> float | None:
        """Predicted downloads of the podcast over the next `days` days; None when
        analytics has too little history to forecast."""
        try:
            response = await self._stub.GetForecast(
                analytics_pb2.GetForecastRequest(podcast_id=str(podcast_id), horizon_days=days),
                metadata=forwarded(credentials),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise peer_error(error, "analytics", not_found=("podcast", str(podcast_id))) from None
        return sum(max(p.predicted_downloads, 0.0) for p in response.points)

    async def country_shares(
        self, podcast_id: uuid.UUID, start: datetime, end: datetime, credentials: Metadata
    ) -> dict[str, int]:
        """Downloads by country over [start, end)."""
        request = analytics_pb2.QueryMetricsRequest(
            podcast_id=str(podcast_id),
            granularity=analytics_pb2.GRANULARITY_TOTAL,
            metrics=[analytics_pb2.METRIC_DOWNLOADS],
            breakdown=analytics_pb2.DIMENSION_COUNTRY,
            breakdown_limit=100,
        )
        request.start_time.FromDatetime(start.astimezone(UTC))
        request.end_time.FromDatetime(end.astimezone(UTC))
        try:
            response = await self._stub.QueryMetrics(
                request, metadata=forwarded(credentials), timeout=PEER_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "analytics", not_found=("podcast", str(podcast_id))) from None
        return {p.dimension_value: p.downloads for p in response.totals}
