"""Live counters in Redis: the key and channel layout, the writer ingestion calls after
each committed batch, and the reads WatchMetrics makes.

Layout (every key hash-tagged by tenant, so a tenant's keys share a Redis Cluster slot):

    {t:<tenant>}:live:<YYYY-MM-DD>            hash, per counting day:
        <scope>|downloads, <scope>|ads         counters (HINCRBY)
        <scope>|listeners_floor                listeners PostgreSQL had at the last repair
        <scope>|repaired                       the ~epoch at which the scope was last
                                               checked against PostgreSQL
        ~epoch                                 bumped when a write of the day was lost
    {t:<tenant>}:listeners:<YYYY-MM-DD>:<scope>  HyperLogLog of listener ids (PFADD)
    {t:<tenant>}:requests:<unix second>        hash <scope> -> requests stored that second
    {t:<tenant>}:live                          pub/sub channel, one message per batch:
                                               {"scopes": ["t", "p:<podcast>", "e:<episode>"]}

A scope is "t" (the tenant), "p:<podcast id>" or "e:<episode id>". The counting day is
the calendar date of the download's time in the counting time zone: the tenant's zone
for calendar-day windows in its zone, UTC otherwise (see `counting_day`).

Redis is never the only copy: counters can lose increments (Redis restarted, or down
while a batch committed). A scope not checked at the day's current epoch is raised to
PostgreSQL's rollups by the first reader (`repair`), and a recorder whose write failed
bumps the epoch once Redis answers again, so lost increments are made good from
PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.analytics.counting.windows import CountingWindow
from services.analytics.queries.buckets import local_date
from services.shared.timezones import time_zone

log = logging.getLogger("podmesh.analytics.live")

REDIS_ERRORS = (RedisError, OSError)
DAY_TTL_S = 3 * 24 * 3600
REQUESTS_TTL_S = 120
REQUEST_WINDOW_S = 60
EPOCH = "~epoch"
TENANT_SCOPE = "t"

# Raises counters to PostgreSQL's values, never lowers them: a batch committed after
# PostgreSQL was read may already be counted here.
_REPAIR = """
for i = 1, #ARGV - 2, 2 do
    local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
    if current < tonumber(ARGV[i + 1]) then
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
end
redis.call('HSET', KEYS[1], ARGV[#ARGV - 1], redis.call('HGET', KEYS[1], '~epoch') or '0')
redis.call('EXPIRE', KEYS[1], ARGV[#ARGV])
return 1
"""


def _tag(tenant_id: uuid.UUID) -> str:
    return f"{{t:{tenant_id}}}"


def counters_key(tenant_id: uuid.UUID, day: date) -> str:
    return f"{_tag(tenant_id)}:live:{day.isoformat()}"


def listeners_key(tenant_id: uuid.UUID, day: date, scope: str) -> str:
    return f"{_tag(tenant_id)}:listeners:{day.isoformat()}:{scope}"


def requests_key(tenant_id: uuid.UUID, second: int) -> str:
    return f"{_tag(tenant_id)}:requests:{second}"


def channel(tenant_id: uuid.UUID) -> str:
    return f"{_tag(tenant_id)}:live"


def scope_token(podcast_id: uuid.UUID | None = None, episode_id: uuid.UUID | None = None) -> str:
    if episode_id is not None:
        return f"e:{episode_id}"
    if podcast_id is not None:
        return f"p:{podcast_id}"
    return TENANT_SCOPE


def counting_day(moment: datetime, counting_window: CountingWindow, tenant_time_zone: str) -> date:
    """The day a download at `moment` counts towards in live counters."""
    name = tenant_time_zone if counting_window is CountingWindow.TENANT_DAY else "UTC"
    zone = time_zone(name) or time_zone("UTC")
    assert zone is not None
    return local_date(moment, zone)


@dataclass(frozen=True, slots=True)
class EpisodeRequests:
    """Listener requests of one episode stored by a batch, counted or not."""

    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    count: int


@dataclass(frozen=True, slots=True)
class CountedDownloads:
    """Downloads of one episode and counting day newly counted by a batch."""

    day: date
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    downloads: int
    ads_delivered: int
    # The listener ids (hashed IP + User-Agent) of those downloads.
    listener_ids: Collection[bytes] = ()


class LiveRecorder:
    """The writer: one per process, called by ingestion after each committed batch."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        # Days whose increments a failed write lost, to be repaired from PostgreSQL.
        self._lost: dict[uuid.UUID, set[date]] = defaultdict(set)
        # Logged once per outage, not once per batch (podmesh_dependency_up tracks it).
        self._failing = False

    async def record_batch(
        self,
        tenant_id: uuid.UUID,
        *,
        requests: Iterable[EpisodeRequests] = (),
        counted: Iterable[CountedDownloads] = (),
        now: float | None = None,
    ) -> bool:
        """Adds a committed batch to the live counters and notifies watchers, in one round
        trip. Never raises for Redis trouble (the batch is safe in PostgreSQL): returns
        False instead, and the days touched are repaired once Redis is back."""
        counted = list(counted)
        second = int(time.time() if now is None else now)
        pipe = self._redis.pipeline(transaction=False)
        touched: set[str] = set()

        per_second: dict[str, int] = defaultdict(int)
        for r in requests:
            for scope in (TENANT_SCOPE, scope_token(r.podcast_id), scope_token(None, r.episode_id)):
                per_second[scope] += r.count
        if per_second:
            key = requests_key(tenant_id, second)
            for scope, count in per_second.items():
                pipe.hincrby(key, scope, count)
            pipe.expire(key, REQUESTS_TTL_S)
            touched.update(per_second)

        per_day: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for c in counted:
            scopes = (TENANT_SCOPE, scope_token(c.podcast_id), scope_token(None, c.episode_id))
            fields = per_day[c.day]
            for scope in scopes:
                fields[f"{scope}|downloads"] += c.downloads
                fields[f"{scope}|ads"] += c.ads_delivered
                if c.listener_ids:
                    key = listeners_key(tenant_id, c.day, scope)
                    pipe.pfadd(key, *c.listener_ids)
                    pipe.expire(key, DAY_TTL_S)
            touched.update(scopes)
        for day, fields in per_day.items():
            key = counters_key(tenant_id, day)
            for name, amount in fields.items():
                if amount:
                    pipe.hincrby(key, name, amount)
            pipe.expire(key, DAY_TTL_S)
        lost = self._lost.get(tenant_id, set())
        for day in lost:
            pipe.hincrby(counters_key(tenant_id, day), EPOCH, 1)
        if touched:
            pipe.publish(channel(tenant_id), json.dumps({"scopes": sorted(touched)}))
        try:
            await pipe.execute()
        except REDIS_ERRORS as error:
            self._lost[tenant_id].update(per_day)
            if not self._failing:
                self._failing = True
                log.warning(
                    "live counters not updated until Redis answers again",
                    extra={"fields": {"error": repr(error)}},
                )
            return False
        if self._failing:
            self._failing = False
            log.warning("live counters updated again")
        self._lost.pop(tenant_id, None)
        return True

    async def forget_day(self, tenant_id: uuid.UUID, day: date, scopes: Collection[str]) -> None:
        """Drops a day's counters after a rebuild recounted it, and tells watchers.

        Counters are only ever raised (a batch may be counted here before PostgreSQL is
        read), but a rebuild can lower a day: without its counters the next reader
        repairs the day from PostgreSQL afresh. Increments landing after this are raised
        to PostgreSQL's values the same way, since they carry no repair mark. Days past
        the counters' lifetime have nothing left to drop. Never raises for Redis trouble.
        """
        if day < datetime.now(UTC).date() - timedelta(seconds=DAY_TTL_S + 86_400):
            return
        try:
            keys = [counters_key(tenant_id, day)]
            pattern = f"{_tag(tenant_id)}:listeners:{day.isoformat()}:*"
            keys.extend([key async for key in self._redis.scan_iter(match=pattern, count=1000)])
            await self._redis.delete(*keys)
            await self._redis.publish(channel(tenant_id), json.dumps({"scopes": sorted(scopes)}))
        except REDIS_ERRORS as error:
            log.warning(
                "live counters of a rebuilt day not reset", extra={"fields": {"error": repr(error)}}
            )


def notified_scopes(message: object) -> frozenset[str]:
    """The scopes a pub/sub message says changed; empty for anything else."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return frozenset()
    try:
        body = json.loads(message["data"])
        return frozenset(str(s) for s in body["scopes"])
    except (ValueError, KeyError, TypeError):
        return frozenset()


@dataclass(frozen=True)
class LiveValues:
    downloads: int
    listeners: int
    ads_delivered: int
    requests_last_minute: int


async def read(
    redis: aioredis.Redis, tenant_id: uuid.UUID, day: date, scope: str, now: float | None = None
) -> tuple[LiveValues, bool]:
    """A scope's counters for a day, and whether that day was checked against PostgreSQL."""
    second = int(time.time() if now is None else now)
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(
        counters_key(tenant_id, day),
        [
            f"{scope}|downloads",
            f"{scope}|ads",
            f"{scope}|listeners_floor",
            f"{scope}|repaired",
            EPOCH,
        ],
    )
    pipe.pfcount(listeners_key(tenant_id, day, scope))
    for past in range(second - REQUEST_WINDOW_S + 1, second + 1):
        pipe.hget(requests_key(tenant_id, past), scope)
    results = await pipe.execute()
    downloads, ads, floor, repaired, epoch = results[0]
    values = LiveValues(
        downloads=int(downloads or 0),
        listeners=max(int(results[1] or 0), int(floor or 0)),
        ads_delivered=int(ads or 0),
        requests_last_minute=sum(int(n or 0) for n in results[2:]),
    )
    return values, repaired is not None and repaired == (epoch or b"0")


async def repair(
    redis: aioredis.Redis,
    tenant_id: uuid.UUID,
    day: date,
    scope: str,
    downloads: int,
    ads_delivered: int,
    listeners: int,
) -> None:
    """Raises a scope's counters for a day to PostgreSQL's values and marks the day checked."""
    await redis.eval(
        _REPAIR,
        1,
        counters_key(tenant_id, day),
        f"{scope}|downloads",
        downloads,
        f"{scope}|ads",
        ads_delivered,
        f"{scope}|listeners_floor",
        listeners,
        f"{scope}|repaired",
        DAY_TTL_S,
    )
