"""The report cache against the real counting_versions table, as the service role: an
answer is reused only while the tenant's counts are unchanged, never across tenants,
never past its age, and one computation serves everyone asking at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from podmesh.analytics.v1 import analytics_pb2 as pb

from devstack.stack import Stack
from services.analytics.queries.report_cache import ReportCache
from services.shared.db import Database


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=1, max_size=4)
    try:
        yield database
    finally:
        await database.close()


class Computer:
    """Answers with a response naming how many times it was asked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    async def __call__(self) -> pb.QueryMetricsResponse:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        response = pb.QueryMetricsResponse()
        response.totals.add(dimension_value=f"answer {self.calls}", downloads=self.calls)
        return response


def label(response: pb.QueryMetricsResponse) -> str:
    return response.totals[0].dimension_value


async def count_once(owner: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
    """What every counting transaction does to the tenant's version."""
    await owner.execute(
        """
        INSERT INTO counting_versions AS v (tenant_id, version) VALUES ($1, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1
        """,
        tenant_id,
    )


async def test_reused_until_the_tenant_counts_again(
    db: Database, owner_conn: asyncpg.Connection
) -> None:
    cache: ReportCache[pb.QueryMetricsResponse] = ReportCache(db, max_bytes=1 << 20, ttl_s=60)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    compute = Computer()

    assert label(await cache.answer(tenant, "q", compute)) == "answer 1"
    assert label(await cache.answer(tenant, "q", compute)) == "answer 1"
    assert label(await cache.answer(other, "q", compute)) == "answer 2"
    assert label(await cache.answer(tenant, "another question", compute)) == "answer 3"

    await count_once(owner_conn, tenant)
    assert label(await cache.answer(tenant, "q", compute)) == "answer 4"
    assert label(await cache.answer(tenant, "q", compute)) == "answer 4"
    # Another tenant's counting changes nothing here.
    await count_once(owner_conn, other)
    assert label(await cache.answer(tenant, "q", compute)) == "answer 4"
    assert compute.calls == 4


async def test_answers_expire_and_a_zero_size_turns_the_cache_off(db: Database) -> None:
    tenant = uuid.uuid4()
    short: ReportCache[pb.QueryMetricsResponse] = ReportCache(db, max_bytes=1 << 20, ttl_s=0.05)
    compute = Computer()
    await short.answer(tenant, "q", compute)
    await asyncio.sleep(0.1)
    assert label(await short.answer(tenant, "q", compute)) == "answer 2"

    off: ReportCache[pb.QueryMetricsResponse] = ReportCache(db, max_bytes=0, ttl_s=60)
    for _ in range(3):
        await off.answer(tenant, "q", compute)
    assert compute.calls == 5


async def test_the_least_recently_used_answers_leave_first(db: Database) -> None:
    tenant = uuid.uuid4()
    size = (await Computer()()).ByteSize()
    cache: ReportCache[pb.QueryMetricsResponse] = ReportCache(db, max_bytes=2 * size, ttl_s=60)
    compute = Computer()
    await cache.answer(tenant, "a", compute)
    await cache.answer(tenant, "b", compute)
    await cache.answer(tenant, "a", compute)
    await cache.answer(tenant, "c", compute)
    assert compute.calls == 3
    assert label(await cache.answer(tenant, "a", compute)) == "answer 1"
    assert label(await cache.answer(tenant, "b", compute)) == "answer 4"


async def test_one_computation_serves_concurrent_askers_and_failures_are_not_kept(
    db: Database,
) -> None:
    tenant = uuid.uuid4()
    cache: ReportCache[pb.QueryMetricsResponse] = ReportCache(db, max_bytes=1 << 20, ttl_s=60)
    slow = Computer(delay_s=0.2)
    answers = await asyncio.gather(*(cache.answer(tenant, "q", slow) for _ in range(8)))
    assert slow.calls == 1
    assert {label(a) for a in answers} == {"answer 1"}

    attempts = 0

    async def failing() -> pb.QueryMetricsResponse:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.05)
        raise RuntimeError("database went away")

    results = await asyncio.gather(
        *(cache.answer(tenant, "broken", failing) for _ in range(3)), return_exceptions=True
    )
    assert attempts == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await cache.answer(tenant, "broken", failing)
    assert attempts == 2


async def test_the_version_function_reads_one_tenant_and_leaves_the_callers_alone(
    db: Database, owner_conn: asyncpg.Connection
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        await count_once(owner_conn, tenant)
    await count_once(owner_conn, other)

    assert await db.fetchval("SELECT tenant_counting_version($1)", tenant) == 3
    assert await db.fetchval("SELECT tenant_counting_version($1)", uuid.uuid4()) == 0
    # Nothing of the tenant stays set for the next statement on the connection.
    assert await db.fetchval("SELECT count(*) FROM counting_versions") == 0
    async with db.tenant_transaction(other) as conn:
        assert await conn.fetchval("SELECT tenant_counting_version($1)", tenant) == 3
        assert await conn.fetchval("SELECT app_tenant_id()") == other
        assert await conn.fetchval("SELECT version FROM counting_versions") == 1
