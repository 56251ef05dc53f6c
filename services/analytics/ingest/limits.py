"""The per-key rate limit on ingestion: a token bucket in Redis that fails open.

Every batch (a stream message or an IngestListenerEvents call) is one request against
the caller's bucket: `api_key_requests_per_second` tokens a second, a burst of twice
that. Redis is never what stops ingestion: while it is unreachable batches pass
unlimited, and after a failure it is not asked again for a few seconds, so a dead
Redis costs one timeout, not one per batch.
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
    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(_TAKE)
        self._skip_until = 0.0

    async def allow(self, subject: str, per_second: int) -> bool:
        """Takes one request from `subject`'s bucket; True when it had one (or Redis is down)."""
        now = time.monotonic()
        if now < self._skip_until:
            return True
        try:
            taken = await self._take(
                keys=[f"ratelimit:ingest:{subject}"], args=[per_second, 2 * per_second, 1]
            )
        except REDIS_ERRORS as error:
            self._skip_until = now + RETRY_AFTER_FAILURE_S
            log.warning(
                "rate limit not checked: Redis unavailable",
                extra={"fields": {"error": repr(error)}},
            )
            return True
        return bool(taken)
