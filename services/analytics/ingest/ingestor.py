"""Ingestion: StreamListenerEvents and IngestListenerEvents (semantics in analytics.proto).

A batch goes through three stages:

1. admission, per batch: size limits, the key's rate limit, the tenant's settings;
2. preparation, concurrently for the batches in flight: episodes resolved through the
   catalog, records checked and anonymised (services.analytics.ingest.records);
3. commit (services.analytics.ingest.store), in one tenant-wide order: a stream's
   batches join it in their order. Batches that wait while a transaction runs go into
   the next one together (group commit): a tenant's counting is serial anyway, and one
   transaction for several batches pays the rollups, sketches and WAL flush once. Two
   transactions of a tenant overlap: the next copies its raw rows and counts while the
   one before it writes its counts.

A batch is acknowledged only after its transaction committed. A stream keeps at most
`ingest_max_in_flight` batches between reading and acknowledging; the next message is
read only when one of them is acknowledged, so a slow database slows the sender
through gRPC flow control and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from podmesh.analytics.v1 import analytics_pb2 as pb
from pydantic import Field

from services.analytics.counting import (
    DAY_US,
    CountingSettings,
    CountingWindow,
    IpHasher,
    compile_rules,
)
from services.analytics.counting_settings import CountingSettingsStore
from services.analytics.ingest import health as ingest_health
from services.analytics.ingest.episodes import EpisodeResolver
from services.analytics.ingest.limits import RateLimiter
from services.analytics.ingest.rebuild import CountRebuilder
from services.analytics.ingest.records import check_batch, episode_references
from services.analytics.ingest.store import (
    BatchArrivals,
    GroupResult,
    Handoff,
    IngestStore,
    StagedBatch,
    TenantCounting,
)
from services.analytics.live.counters import CountedDownloads, EpisodeRequests, LiveRecorder
from services.analytics.peers import Metadata, TenantProfiles
from services.analytics.queries.funnel_report import filter_reason_counts
from services.shared.auth import Principal
from services.shared.batch_stream import acknowledged_in_order, batch_size_problem
from services.shared.config import Settings
from services.shared.context import current_principal, current_tenant_id
from services.shared.errors import (
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.shared.leases import PeriodicLease
from services.shared.server import Resources

log = logging.getLogger("podmesh.analytics.ingest")

MAX_BATCH_RECORDS = 5_000
HOUR_US = 3_600 * 1_000_000
HANDOFF_KEPT_S = 10.0


class IngestSettings(Settings):
    # Raw requests older than this are rejected on arrival and dropped by the hour.
    raw_retention_days: int = Field(default=180, ge=31)
    # Requests that arrive more than this long after their counting window closed are
    # stored but left to RebuildCounts: the window's state is pruned by then.
    counting_grace_hours: int = Field(default=72, ge=1)
    # Batches per stream between reading and acknowledging.
    ingest_max_in_flight: int = Field(default=4, ge=1, le=8)
    # One transaction takes waiting batches up to this many records.
    ingest_group_max_records: int = Field(default=20_000, ge=MAX_BATCH_RECORDS)
    episode_cache_ttl_s: float = Field(default=60.0, gt=0)
    episode_negative_ttl_s: float = Field(default=5.0, gt=0)
    # How long a tenant's settings and quotas, and its counting filters, are cached.
    tenant_settings_ttl_s: float = Field(default=30.0, gt=0)
    maintenance_interval_s: float = Field(default=3600.0, gt=0)
    # What the per-key rate limit does while Redis is down (see ingest_limits).
    ingest_rate_limit_without_redis: Literal["open", "closed"] = "open"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    accepted: int
    duplicates: int
    rejections: Sequence[pb.Rejection]
    arrivals: BatchArrivals = field(default_factory=BatchArrivals)

    def counts(self) -> dict[str, Any]:
        """The acknowledgement's counts, the same in both responses."""
        arrivals = self.arrivals
        return {
            "accepted_count": self.accepted,
            "duplicate_count": self.duplicates,
            "rejections": self.rejections,
            "filtered_counts": filter_reason_counts(arrivals.filtered),
            "late_count": arrivals.late,
            "countable_count": arrivals.countable,
        }


@dataclass(slots=True)
class _Pending:
    batch: StagedBatch
    counting: TenantCounting
    done: asyncio.Future[BatchArrivals]


@dataclass(slots=True)
class _Committer:
    """One tenant's queue of batches waiting for a transaction, and its worker."""

    pending: list[_Pending] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    # The handoff of the latest transaction started (see store.Handoff).
    last: Handoff | None = None
    live: list[tuple[list[EpisodeRequests], list[CountedDownloads]]] = field(default_factory=list)
    live_writer: asyncio.Task[None] | None = None


class Ingestor:
    def __init__(
        self,
        store: IngestStore,
        episodes: EpisodeResolver,
        tenants: TenantProfiles,
        counting_settings: CountingSettingsStore,
        limiter: RateLimiter,
        live: LiveRecorder,
        settings: IngestSettings,
    ) -> None:
        self._store = store
        self._episodes = episodes
        self._tenants = tenants
        self._counting_settings = counting_settings
        self._limiter = limiter
        self._live = live
        self._settings = settings
        self._ip_secret = settings.ip_hash_secret.get_secret_value().encode()
        self._hashers: dict[uuid.UUID, IpHasher] = {}
        self._filters: dict[uuid.UUID, tuple[float, CountingSettings]] = {}
        self._committers: dict[uuid.UUID, _Committer] = {}
        # Held here because the event loop keeps only a weak reference to tasks.
        self._upkeep: asyncio.Task[None] | None = None

    # --- upkeep ---------------------------------------------------------------------

    def start_upkeep(self, lease: PeriodicLease) -> None:
        """Runs `upkeep` now and every `maintenance_interval_s` while the process lives,
        on one replica per interval (the lease's holder)."""
        self._upkeep = lease.start(self.upkeep)

    async def upkeep(self) -> None:
        """Partitions for the next days, old days dropped, closed windows' states pruned."""
        now_us = time.time_ns() // 1000
        today = now_us // DAY_US
        await self._store.ensure_partitions(range(today - 1, today + 3))
        dropped = await self._store.drop_partitions_before(
            today - self._settings.raw_retention_days
        )
        # A window that started this long ago ended (25 hours at most) a day before
        # the watermark ingestion uses from now on: no request it could still count
        # falls in it (a rolling window it would open ends after the watermark), and
        # none falls in a window starting before it, which late checks must see.
        pruned = await self._store.prune_states_before(
            now_us - (self._settings.counting_grace_hours + 50) * HOUR_US
        )
        log.info(
            "ingestion upkeep",
            extra={"fields": {"partitions_dropped": len(dropped), "states_pruned": pruned}},
        )

    # --- the two RPCs ---------------------------------------------------------------

    async def stream(
        self,
        messages: AsyncIterator[pb.StreamListenerEventsRequest],
        credentials: Metadata,
    ) -> AsyncIterator[pb.StreamListenerEventsResponse]:
        """Acknowledges each batch once durable, in order; ends with the first batch error."""
        tenant_id = current_tenant_id()
        principal = current_principal()
        # Set once the batch before is queued for its transaction: a stream's batches
        # are prepared at once but committed in order.
        previous: asyncio.Event | None = None

        def check(message: pb.StreamListenerEventsRequest) -> InvalidArgument | None:
            return _batch_size_problem(len(message.requests), message.ByteSize())

        def start(message: pb.StreamListenerEventsRequest) -> Awaitable[BatchOutcome]:
            nonlocal previous
            queued = asyncio.Event()
            work = self._ingest(
                tenant_id, principal, message.requests, credentials, previous, queued
            )
            previous = queued
            return work

        async for sequence, outcome in acknowledged_in_order(
            messages, check, start, self._settings.ingest_max_in_flight
        ):
            yield pb.StreamListenerEventsResponse(sequence=sequence, **outcome.counts())

    async def ingest(
        self, request: pb.IngestListenerEventsRequest, credentials: Metadata
    ) -> pb.IngestListenerEventsResponse:
        problem = _batch_size_problem(len(request.requests), request.ByteSize())
        if problem is not None:
            raise problem
        outcome = await self._ingest(
            current_tenant_id(), current_principal(), request.requests, credentials
        )
        return pb.IngestListenerEventsResponse(**outcome.counts())

    # --- one batch -----------------------------------------------------------------

    async def _ingest(
        self,
        tenant_id: uuid.UUID,
        principal: Principal,
        records: Sequence[pb.ListenerRequest],
        credentials: Metadata,
        after: asyncio.Event | None = None,
        queued: asyncio.Event | None = None,
    ) -> BatchOutcome:
        """Admits, prepares and commits one batch. A batch of a stream waits for the one
        before it (`after`) to be queued, and says when it is (`queued`)."""
        try:
            return await self._ingest_batch(
                tenant_id, principal, records, credentials, after, queued
            )
        except Exception as error:
            ingest_health.batch_failed(error)
            raise
        finally:
            if queued is not None:
                queued.set()

    async def _ingest_batch(
        self,
        tenant_id: uuid.UUID,
        principal: Principal,
        records: Sequence[pb.ListenerRequest],
        credentials: Metadata,
        after: asyncio.Event | None,
        queued: asyncio.Event | None,
    ) -> BatchOutcome:
        profile = await self._tenants.get(tenant_id)
        profile.require_ingestion()
        if not await self._limiter.allow(
            f"{principal.type.value}:{principal.subject_id}", profile.requests_per_second
        ):
            raise ResourceExhausted(
                f"this credential may send {profile.requests_per_second} batches a second "
                f"(bursts of {2 * profile.requests_per_second}); slow down and resend",
                reason="RATE_LIMITED",
            )
        filters = await self._tenant_filters(tenant_id, profile.counting_window, profile.time_zone)
        rules = compile_rules(filters)
        episode_ids, media_urls = episode_references(records)
        resolution = await self._episodes.resolve(tenant_id, episode_ids, media_urls, credentials)
        now_us = time.time_ns() // 1000
        checked = await check_batch(
            records,
            tenant_id=tenant_id,
            by_id=resolution.by_id,
            by_url=resolution.by_url,
            hasher=self._hasher(tenant_id),
            exclusions=rules.ip_exclusions,
            now_us=now_us,
            oldest_us=now_us - self._settings.raw_retention_days * DAY_US,
        )
        rejections = [
            pb.Rejection(index=r.index, request_id=r.request_id, reason=r.reason, message=r.message)
            for r in checked.rejections
        ]
        if not checked.rows:
            return BatchOutcome(0, checked.duplicates, rejections)
        staged = StagedBatch(
            rows=checked.rows,
            requests=checked.requests,
            media=resolution.media,
            podcasts={e.episode_id: e.podcast_id for e in resolution.by_id.values()}
            | {e.episode_id: e.podcast_id for e in resolution.by_url.values()},
            repeated=checked.repeated,
        )
        counting = TenantCounting(
            rules=rules,
            window=profile.counting_window,
            time_zone=profile.time_zone,
            monthly_events=profile.monthly_events,
        )
        if after is not None:
            await after.wait()
        arrivals = await self._commit(tenant_id, staged, counting, queued)
        return BatchOutcome(
            arrivals.accepted,
            len(checked.rows) - arrivals.accepted + checked.duplicates,
            rejections,
            arrivals,
        )

    def _hasher(self, tenant_id: uuid.UUID) -> IpHasher:
        hasher = self._hashers.get(tenant_id)
        if hasher is None:
            hasher = self._hashers[tenant_id] = IpHasher(self._ip_secret, tenant_id)
        return hasher

    async def _tenant_filters(
        self, tenant_id: uuid.UUID, window: CountingWindow, time_zone: str
    ) -> CountingSettings:
        """The tenant's counting settings: its window (tenant service) and filters (ours)."""
        now = time.monotonic()
        cached = self._filters.get(tenant_id)
        if (
            cached is not None
            and cached[0] > now
            and (cached[1].window, cached[1].time_zone) == (window, time_zone)
        ):
            return cached[1]
        stored = await self._counting_settings.get(tenant_id)
        filters = CountingSettings(
            window=window,
            time_zone=time_zone,
            excluded_ip_ranges=stored.excluded_ip_ranges,
            excluded_user_agents=stored.excluded_user_agents,
        )
        self._filters[tenant_id] = (now + self._settings.tenant_settings_ttl_s, filters)
        return filters

    # --- group commit --------------------------------------------------------------

    async def _commit(
        self,
        tenant_id: uuid.UUID,
        batch: StagedBatch,
        counting: TenantCounting,
        queued: asyncio.Event | None,
    ) -> BatchArrivals:
        committer = self._committers.setdefault(tenant_id, _Committer())
        done: asyncio.Future[BatchArrivals] = asyncio.get_running_loop().create_future()
        committer.pending.append(_Pending(batch, counting, done))
        if queued is not None:
            queued.set()
        if committer.worker is None or committer.worker.done():
            committer.worker = asyncio.create_task(self._commit_loop(tenant_id, committer))
        # Shielded: a stream that goes away must not cancel a transaction other
        # streams' batches share; its batch is simply not acknowledged.
        done.add_done_callback(_observed)
        return await asyncio.shield(done)

    async def _commit_loop(self, tenant_id: uuid.UUID, committer: _Committer) -> None:
        """Starts the tenant's groups in order, each once the one before holds the
        counting lock: a group copies its raw rows and counts while the one before it
        writes (PostgreSQL and this process both busy), then writes once it committed."""
        while committer.pending:
            group = self._take_group(committer)
            handoff = Handoff()
            previous, committer.last = committer.last, handoff
            task = asyncio.create_task(
                self._commit_or_split(tenant_id, committer, group, handoff, previous)
            )
            committer.in_flight.add(task)
            task.add_done_callback(committer.in_flight.discard)
            await handoff.locked.wait()
        # A tenant idle for a while keeps no counted states in memory; its next group
        # counts under the lock.
        asyncio.get_running_loop().call_later(
            HANDOFF_KEPT_S, _forget_handoff, committer, committer.last
        )

    async def _commit_or_split(
        self,
        tenant_id: uuid.UUID,
        committer: _Committer,
        group: list[_Pending],
        handoff: Handoff,
        previous: Handoff | None,
    ) -> None:
        try:
            await self._commit_group(tenant_id, committer, group, handoff, previous)
        except Exception as error:
            ingest_health.observe_failure(error)
            if len(group) > 1 and not isinstance(error, Unavailable):
                # One batch's problem (a quota it passes, a bug it triggers) must not
                # fail the batches it happened to share a transaction with.
                for pending in group:
                    await self._commit_alone(tenant_id, committer, pending)
            else:
                for pending in group:
                    _fail(pending.done, error)

    def _take_group(self, committer: _Committer) -> list[_Pending]:
        first = committer.pending[0]
        group = [first]
        records = len(first.batch.rows)
        for pending in committer.pending[1:]:
            records += len(pending.batch.rows)
            if records > self._settings.ingest_group_max_records:
                break
            if pending.counting != first.counting:
                break
            group.append(pending)
        del committer.pending[: len(group)]
        return group

    async def _commit_alone(
        self, tenant_id: uuid.UUID, committer: _Committer, pending: _Pending
    ) -> None:
        try:
            await self._commit_group(tenant_id, committer, [pending], Handoff(), None)
        except Exception as error:
            _fail(pending.done, error)

    async def _commit_group(
        self,
        tenant_id: uuid.UUID,
        committer: _Committer,
        group: list[_Pending],
        handoff: Handoff,
        previous: Handoff | None,
    ) -> None:
        counting = group[0].counting
        watermark_us = time.time_ns() // 1000 - self._settings.counting_grace_hours * HOUR_US
        result = await self._store.commit(
            tenant_id, [p.batch for p in group], counting, watermark_us, handoff, previous
        )
        ingest_health.observe_commit(p.batch for p in group)
        for pending, arrivals in zip(group, result.arrivals, strict=True):
            if not pending.done.done():
                pending.done.set_result(arrivals)
        self._forward_live(tenant_id, committer, result)

    # --- live counters -------------------------------------------------------------

    def _forward_live(
        self, tenant_id: uuid.UUID, committer: _Committer, result: GroupResult
    ) -> None:
        """Hands a committed group to the live counters without waiting for Redis.

        While a write is under way the next groups wait and go together in the next
        one, so a slow or hung Redis delays live numbers, never ingestion.
        """
        if not result.requests and not result.counted:
            return
        committer.live.append((result.requests, result.counted))
        if committer.live_writer is None or committer.live_writer.done():
            committer.live_writer = asyncio.create_task(self._write_live(tenant_id, committer))

    async def _write_live(self, tenant_id: uuid.UUID, committer: _Committer) -> None:
        while committer.live:
            waiting, committer.live = committer.live, []
            try:
                await self._live.record_batch(
                    tenant_id,
                    requests=[r for requests, _ in waiting for r in requests],
                    counted=[c for _, counted in waiting for c in counted],
                )
            except Exception:
                # Redis is never the only copy: the live side repairs from PostgreSQL.
                log.exception("live counters not updated")


def _forget_handoff(committer: _Committer, handoff: Handoff | None) -> None:
    if committer.last is handoff:
        committer.last = None


def _observed(done: asyncio.Future[BatchArrivals]) -> None:
    """Marks a failure seen even when its batch's stream went away before it."""
    if not done.cancelled():
        done.exception()


def _fail(done: asyncio.Future[BatchArrivals], error: BaseException) -> None:
    if not done.done():
        done.set_exception(error)


def _batch_size_problem(records: int, size: int) -> InvalidArgument | None:
    return batch_size_problem(records, size, MAX_BATCH_RECORDS, "requests")


async def build_ingestion(
    resources: Resources, tenants: TenantProfiles, counting_settings: CountingSettingsStore
) -> tuple[Ingestor, CountRebuilder]:
    """This process's ingestor and count rebuilder, and the upkeep of raw storage."""
    settings = resources.settings
    assert isinstance(settings, IngestSettings)
    store = await IngestStore.create(resources.db)
    episodes = EpisodeResolver(
        resources.channel("catalog"), settings.episode_cache_ttl_s, settings.episode_negative_ttl_s
    )
    live_counters = LiveRecorder(resources.redis)
    ingestor = Ingestor(
        store,
        episodes,
        tenants,
        counting_settings,
        RateLimiter(
            resources.redis,
            open_without_redis=settings.ingest_rate_limit_without_redis == "open",
        ),
        live_counters,
        settings,
    )
    rebuilder = CountRebuilder(
        resources.db,
        episodes,
        tenants,
        counting_settings,
        live_counters,
        retention_days=settings.raw_retention_days,
        grace_hours=settings.counting_grace_hours,
    )
    ingestor.start_upkeep(
        PeriodicLease(
            resources.db, resources.redis, "analytics", "upkeep", settings.maintenance_interval_s
        )
    )
    # Each request allocates a dozen short-lived objects and batches in flight live long
    # enough to be promoted, so with the default thresholds (700, 10, 10) the cyclic
    # collector took about a seventh of the process's time under load (py-spy). Objects
    # that live as long as the process are frozen out of collections altogether.
    gc.freeze()
    gc.set_threshold(100_000, 20, 10)
    return ingestor, rebuilder
