"""The ingestion rate limit while Redis is unreachable: open or closed, as configured."""

from __future__ import annotations

from devstack.procs import free_ports
from services.analytics.ingest.limits import RateLimiter
from services.shared.server import create_redis


async def test_the_limiter_fails_open_or_closed_as_set() -> None:
    (port,) = free_ports(1)
    gone = create_redis(f"redis://127.0.0.1:{port}/0")
    try:
        fails_open = RateLimiter(gone)
        fails_closed = RateLimiter(gone, open_without_redis=False)
        assert [await fails_open.allow("key", 10) for _ in range(3)] == [True] * 3
        assert [await fails_closed.allow("key", 10) for _ in range(3)] == [False] * 3
    finally:
        await gone.aclose()
