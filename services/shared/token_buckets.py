"""Rate limits as token buckets in Redis, written once for every limit (ingestion per
key, pixel calls per pixel and household).

The bucket's state and clock are Redis's (one Lua script per take), so clients' clocks
never matter and every replica shares one bucket. Outages as services.shared.redis_outages
says; what a limit does while Redis is unreachable is its caller's choice.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from services.shared.redis_outages import REDIS_ERRORS, RedisOutage

log = logging.getLogger("podmesh.ratelimit")

# KEYS[1] the bucket; ARGV: tokens per second, burst. Returns 0 when a token was taken,
# else the milliseconds until one is there.
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


class TokenBuckets:
    """Buckets under one key prefix, e.g. "ratelimit:ingest"."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._take = redis.register_script(_TAKE)
        self._prefix = prefix
        self._outage = RedisOutage(
            log,
            "rate limit not checked: Redis unavailable",
            "rate limit checked again: Redis answers",
            {"limit": prefix},
        )

    async def take(self, subject: str, per_second: float, burst: float) -> float | None:
        """Takes one token from `subject`'s bucket: 0.0 when it had one, else the
        seconds until it will; None while Redis cannot be asked."""
        if self._outage.waiting():
            return None
        try:
            wait_ms = await self._take(keys=[f"{self._prefix}:{subject}"], args=[per_second, burst])
        except REDIS_ERRORS as error:
            self._outage.failed(error)
            return None
        self._outage.answered()
        return int(wait_ms) / 1000
