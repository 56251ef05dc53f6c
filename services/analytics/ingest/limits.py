"""The per-key rate limit on ingestion: a token bucket in Redis.

Every batch (a stream message or an IngestListenerEvents call) is one request against
the caller's bucket (services.shared.token_buckets): `api_key_requests_per_second`
tokens a second, a burst of twice that. While Redis is unreachable the limiter does what
PODMESH_INGEST_RATE_LIMIT_WITHOUT_REDIS says: "open" (the default) lets batches pass
unlimited, so Redis is never what stops ingestion; "closed" refuses them as rate
limited, for operators who would rather lose ingestion than the limit.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from services.shared.token_buckets import TokenBuckets


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, open_without_redis: bool = True) -> None:
        self._buckets = TokenBuckets(redis, "ratelimit:ingest")
        self._open_without_redis = open_without_redis

    async def allow(self, subject: str, per_second: int) -> bool:
        """Takes one request from `subject`'s bucket; True when it had one, and while
        Redis is down when the limiter fails open."""
        wait = await self._buckets.take(subject, per_second, 2 * per_second)
        if wait is None:
            return self._open_without_redis
        return wait == 0
