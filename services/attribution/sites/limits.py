"""The rate limit on pixel calls without a credential: a token bucket in Redis per
pixel and client, so one page (or one script replaying a pixel's id) cannot flood a
sponsor's events.

The client is the household id (the keyed hash of its address), so no raw IP is kept
in Redis either. While Redis is unreachable calls pass unlimited, as ingestion's
limit does by default: Redis is never what stops a sponsor's pixel.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("podmesh.attribution.sites")

_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_RETRY_AFTER_FAILURE_S = 5.0

# KEYS[1] the bucket; ARGV: tokens per second, burst. Redis's clock. Returns 0 when a
# token was taken, else the milliseconds until one is there.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
else
    wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class PixelRateLimiter:
    def __init__(self, redis: aioredis.Redis, per_minute: int) -> None:
        self._take = redis.register_script(_TAKE)
        self._per_minute = per_minute
        self._skip_until = 0.0

    async def wait_s(self, pixel_id: uuid.UUID, household_id: bytes) -> float:
        """Takes one call from the bucket: 0 when it had one, else how long to wait."""
        now = time.monotonic()
        if now < self._skip_until:
            return 0.0
        try:
            wait_ms = await self._take(
                keys=[f"ratelimit:pixel:{pixel_id}:{household_id.hex()}"],
                args=[self._per_minute / 60, self._per_minute],
            )
        except _REDIS_ERRORS as error:
            self._skip_until = now + _RETRY_AFTER_FAILURE_S
            log.warning(
                "pixel rate limit not checked: Redis unavailable",
                extra={"fields": {"error": repr(error)}},
            )
            return 0.0
        return int(wait_ms) / 1000
