"""Periodic jobs with several replicas: one run per interval, never two at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from devstack.procs import free_ports
from devstack.stack import Stack
from services.shared.db import Database
from services.shared.leases import PeriodicLease
from services.shared.server import create_redis


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=1, max_size=4)
    try:
        yield database
    finally:
        await database.close()


class Job:
    """Counts its runs, and how many ever overlapped."""

    def __init__(self, takes_s: float = 0.0) -> None:
        self.runs = 0
        self.running = 0
        self.most_at_once = 0
        self._takes_s = takes_s

    async def __call__(self) -> None:
        self.runs += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self._takes_s)
        finally:
            self.running -= 1


async def test_two_replicas_run_a_job_once_per_interval(db: Database, stack: Stack) -> None:
    job_name = f"job-{uuid.uuid4().hex[:8]}"
    redis = create_redis(stack.redis_url)
    try:
        replicas = [PeriodicLease(db, redis, "test", job_name, 60.0) for _ in range(2)]
        job = Job()
        ran = await asyncio.gather(*(r.run(job) for r in replicas))
        again = await asyncio.gather(*(r.run(job) for r in replicas))
    finally:
        await redis.aclose()

    assert sorted(ran) == [False, True]
    assert again == [False, False]
    assert job.runs == 1


async def test_without_redis_the_advisory_lock_keeps_runs_apart(db: Database) -> None:
    # A Redis that is not there: the lease cannot be asked for, every replica may try.
    (port,) = free_ports(1)
    gone = create_redis(f"redis://127.0.0.1:{port}/0")
    try:
        replicas = [PeriodicLease(db, gone, "test", f"job-{uuid.uuid4().hex[:8]}", 60.0)] * 3
        job = Job(takes_s=0.5)
        ran = await asyncio.gather(*(r.run(job) for r in replicas))
    finally:
        await gone.aclose()

    assert job.most_at_once == 1
    assert ran.count(True) == job.runs >= 1
