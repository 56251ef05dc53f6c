"""The rate limit on pixel calls without a credential: a token bucket in Redis
(services.shared.token_buckets) per pixel and client, so one page (or one script
replaying a pixel's id) cannot flood a sponsor's events.

The client is the household id (the keyed hash of its address), so no raw IP is kept
in Redis either. While Redis is unreachable calls pass unlimited, as ingestion's
limit does by default: Redis is never what stops a sponsor's pixel.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from services.shared.token_buckets import TokenBuckets


class PixelRateLimiter:
    def __init__(self, redis: aioredis.Redis, per_minute: int) -> None:
        self._buckets = TokenBuckets(redis, "ratelimit:pixel")
        self._per_minute = per_minute

    async def wait_s(self, pixel_id: uuid.UUID, household_id: bytes) -> float:
        """Takes one call from the bucket: 0 when it had one, else how long to wait."""
        wait = await self._buckets.take(
            f"{pixel_id}:{household_id.hex()}", self._per_minute / 60, self._per_minute
        )
        return wait or 0.0
