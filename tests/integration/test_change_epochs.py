"""Change counters in the real Redis (services.shared.change_epochs): a bump moves the
counter on, a lost counter never comes back to a value a reader saw, a reader's memory
of the counter lasts `recheck_s`, and an unreachable Redis answers None."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from services.shared.change_epochs import ChangeEpochs
from services.shared.server import create_redis


async def test_a_bump_moves_the_counter_of_its_tenant_only(redis: aioredis.Redis) -> None:
    epochs = ChangeEpochs(redis, "test")
    tenant, other = uuid.uuid4(), uuid.uuid4()
    before, other_before = await epochs.read(tenant), await epochs.read(other)
    assert before is not None
    await epochs.bump(tenant)
    assert await epochs.read(tenant) == before + 1
    assert await epochs.read(other) == other_before


async def test_a_lost_counter_starts_again_elsewhere(redis: aioredis.Redis) -> None:
    epochs = ChangeEpochs(redis, "test")
    tenant = uuid.uuid4()
    seen = await epochs.read(tenant)
    await redis.delete(f"epoch:test:{tenant}")
    assert await epochs.read(tenant) != seen
    await redis.delete(f"epoch:test:{tenant}")
    await epochs.bump(tenant)
    assert await epochs.read(tenant) not in (seen, 1)


async def test_a_read_counter_is_taken_as_current_for_recheck_s(redis: aioredis.Redis) -> None:
    tenant = uuid.uuid4()
    remembering = ChangeEpochs(redis, "test", recheck_s=3600)
    asking = ChangeEpochs(redis, "test")
    first = await remembering.read(tenant)
    await asking.bump(tenant)
    assert await remembering.read(tenant) == first
    assert await asking.read(tenant) != first


async def test_an_unreachable_redis_answers_none_and_bumps_do_not_raise() -> None:
    client = create_redis("redis://127.0.0.1:9/0")
    try:
        epochs = ChangeEpochs(client, "test")
        assert await epochs.read(uuid.uuid4()) is None
        await epochs.bump(uuid.uuid4())
    finally:
        await client.aclose()
