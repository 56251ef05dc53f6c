"""The per-key rate limit on ingestion: a token bucket in Redis.

Every batch (a stream message or an IngestListenerEvents call) is one request against
the caller's bucket: `api_key_requests_per_second` tokens a second, a burst of twice
that. While Redis is unreachable the limiter does what
PODMESH_INGEST_RATE_LIMIT_WITHOUT_REDIS says: "open" (the default) lets batches pass
unlimited, so Redis is never what stops ingestion; "closed" refuses them as rate
limited, for operators who would rather lose ingestion than the limit. After a
failure Redis is not asked again for a few seconds, so a dead Redis costs one timeout,
not one per batch.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("podmesh.analytics.ingest")

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
RETRY_AFTER_FAILURE_S = 5.0

# KEYS[1] the bucket; ARGV: tokens per second, burst, cost. Redis's clock, so clients'
# clocks never matter. Returns 1 when the cost was taken.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local taken = 0
if tokens >= cost then
    tokens = tokens - cost
    taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return taken
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, open_without_redis: bool = True) -> None:
        self._take = redis.register_script(_TAKE)
        self._skip_until = 0.0
        self._open_without_redis = open_without_redis
        # Logged once per outage, not once per retry.
        self._down = False

    async def allow(self, subject: str, per_second: int) -> bool:
        """Takes one request from `subject`'s bucket; True when it had one, and while
        Redis is down when the limiter fails open."""
        now = time.monotonic()
        if now < self._skip_until:
            return self._open_without_redis
        try:
            taken = await self._take(
                keys=[f"ratelimit:ingest:{subject}"], args=[per_second, 2 * per_second, 1]
            )
        except REDIS_ERRORS as error:
            self._skip_until = now + RETRY_AFTER_FAILURE_S
            if self._down:
                return self._open_without_redis
            self._down = True
            log.warning(
                "rate limit not checked: Redis unavailable",
                extra={
                    "fields": {
                        "error": repr(error),
                        "batches": "let through" if self._open_without_redis else "refused",
                    }
                },
            )
            return self._open_without_redis
        if self._down:
            self._down = False
            log.warning("rate limit checked again: Redis answers")
        return bool(taken)
