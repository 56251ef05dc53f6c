"""WatchMetrics: today's live counters of a tenant, podcast or episode as a stream.

Values come from the Redis counters ingestion keeps (see counters.py), re-read when the
tenant's channel says the watched scope changed, at most once per `min_interval_s`.
While Redis cannot be reached the stream goes on from PostgreSQL's rollups every
`poll_s` seconds, flagged degraded, and returns to Redis as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from services.analytics.live import counters as live
from services.analytics.peers import ClockSource, TenantClock
from services.analytics.queries import repository as repo
from services.analytics.queries.buckets import day_start
from services.analytics.queries.reports import listeners_estimate
from services.shared.db import Database
from services.shared.errors import InvalidArgument
from services.shared.timezones import time_zone


@dataclass(frozen=True)
class LiveCounters:
    update_time: datetime
    day_start: datetime
    downloads_today: int
    listeners_today: int
    ads_delivered_today: int
    requests_last_minute: int
    degraded: bool

    def same_values(self, other: LiveCounters) -> bool:
        return replace(self, update_time=other.update_time) == other


class LiveWatcher:
    def __init__(
        self,
        db: Database,
        redis: aioredis.Redis,
        clocks: ClockSource,
        *,
        min_interval_s: float = 1.0,
        heartbeat_s: float = 15.0,
        poll_s: float = 3.0,
    ) -> None:
        self._db = db
        self._redis = redis
        self._clocks = clocks
        self._min_interval_s = min_interval_s
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s

    async def watch(
        self,
        tenant_id: uuid.UUID,
        podcast_id: uuid.UUID | None,
        episode_id: uuid.UUID | None,
    ) -> AsyncGenerator[tuple[LiveCounters, bool], None]:
        """(counters, heartbeat) pairs: at once, on change, and every heartbeat_s."""
        if podcast_id is not None and episode_id is not None:
            raise InvalidArgument.field("episode_id", "give podcast_id or episode_id, not both")
        clock = await self._clocks.clock(tenant_id)
        scope = live.scope_token(podcast_id, episode_id)
        pubsub: PubSub | None = None
        last: LiveCounters | None = None
        sent_at = 0.0
        try:
            while True:
                if pubsub is None:
                    pubsub = await self._subscribe(tenant_id)
                counters = None
                if pubsub is not None:
                    # Back from degraded: Redis may have missed batches meanwhile.
                    recovering = last is not None and last.degraded
                    try:
                        counters = await self._from_redis(tenant_id, clock, scope, recovering)
                    except live.REDIS_ERRORS:
                        await _close(pubsub)
                        pubsub = None
                if counters is None:
                    counters = await self._from_postgres(tenant_id, clock, scope)
                now = time.monotonic()
                if last is None or not counters.same_values(last):
                    yield counters, False
                    sent_at = now
                elif now - sent_at >= self._heartbeat_s:
                    yield counters, True
                    sent_at = now
                last = counters
                if pubsub is None:
                    await asyncio.sleep(self._poll_s)
                    continue
                try:
                    await _notified(pubsub, scope, sent_at + self._heartbeat_s)
                except live.REDIS_ERRORS:
                    await _close(pubsub)
                    pubsub = None
                    continue
                await asyncio.sleep(max(0.0, sent_at + self._min_interval_s - time.monotonic()))
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self, tenant_id: uuid.UUID) -> PubSub | None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(live.channel(tenant_id))
        except live.REDIS_ERRORS:
            await _close(pubsub)
            return None
        return pubsub

    async def _from_redis(
        self, tenant_id: uuid.UUID, clock: TenantClock, scope: str, repair: bool
    ) -> LiveCounters:
        now = datetime.now(UTC)
        day = live.counting_day(now, clock.counting_window, clock.time_zone)
        values, repaired = await live.read(self._redis, tenant_id, day, scope)
        if repair or not repaired:
            stored = await self._from_postgres(tenant_id, clock, scope)
            await live.repair(
                self._redis,
                tenant_id,
                day,
                scope,
                stored.downloads_today,
                stored.ads_delivered_today,
                stored.listeners_today,
            )
            values, _ = await live.read(self._redis, tenant_id, day, scope)
        zone = time_zone(clock.day_zone)
        assert zone is not None
        return LiveCounters(
            update_time=now,
            day_start=day_start(day, zone),
            downloads_today=values.downloads,
            listeners_today=values.listeners,
            ads_delivered_today=values.ads_delivered,
            requests_last_minute=values.requests_last_minute,
            degraded=False,
        )

    async def _from_postgres(
        self, tenant_id: uuid.UUID, clock: TenantClock, scope: str
    ) -> LiveCounters:
        """Today from the rollups; requests per minute are known only to Redis (0 here)."""
        now = datetime.now(UTC)
        day = live.counting_day(now, clock.counting_window, clock.time_zone)
        zone = time_zone(clock.day_zone)
        cube = clock.cube_zone(clock.day_zone)
        assert zone is not None
        assert cube is not None
        podcast_id, episode_ids = _scope_filter(scope)
        following = day + timedelta(days=1)
        async with self._db.tenant_transaction(tenant_id) as conn:
            totals = await repo.daily_totals(
                conn, tenant_id, cube, day, following, podcast_id, episode_ids
            )
            sketches = await repo.listener_sketches(
                conn, tenant_id, cube, day, following, podcast_id, episode_ids
            )
        return LiveCounters(
            update_time=now,
            day_start=day_start(day, zone),
            downloads_today=sum(t[1] for t in totals),
            listeners_today=listeners_estimate(s.sketch for s in sketches),
            ads_delivered_today=sum(t[2] for t in totals),
            requests_last_minute=0,
            degraded=True,
        )


def _scope_filter(scope: str) -> tuple[uuid.UUID | None, tuple[uuid.UUID, ...]]:
    kind, _, value = scope.partition(":")
    if kind == "p":
        return uuid.UUID(value), ()
    if kind == "e":
        return None, (uuid.UUID(value),)
    return None, ()


async def _notified(pubsub: PubSub, scope: str, deadline: float) -> None:
    """Returns when the scope changed or at `deadline`, whichever comes first."""
    while (remaining := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if scope in live.notified_scopes(message):
            return


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(*live.REDIS_ERRORS):
        await pubsub.aclose()
