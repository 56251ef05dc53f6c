"""Deadlocks and serialization failures: retried a bounded number of times, then ABORTED,
never an internal error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from devstack.stack import Stack
from services.shared.auth import Role
from services.shared.db import Database
from services.shared.errors import Aborted
from services.tenant import repository as repo
from services.tenant.domain import Tenant, User


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=2, max_size=4)
    try:
        yield database
    finally:
        await database.close()


async def two_users(db: Database) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    tenant_id = uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    async with db.tenant_transaction(tenant_id) as conn:
        await repo.insert_tenant(conn, Tenant(tenant_id, f"db-{tenant_id.hex[:12]}", "Conflicts"))
        for user_id in (first, second):
            user = User(user_id, f"{user_id.hex[:8]}@example.com", "", Role.VIEWER)
            await repo.insert_user(conn, tenant_id, user, "not-a-hash")
    return tenant_id, first, second


async def test_a_deadlocked_transaction_runs_again(db: Database) -> None:
    tenant_id, first, second = await two_users(db)
    both_hold_one = asyncio.Barrier(2)
    attempts: list[str] = []

    def crossing(
        name: str, one: uuid.UUID, other: uuid.UUID
    ) -> Callable[[asyncpg.Connection], Awaitable[str]]:
        async def work(conn: asyncpg.Connection) -> str:
            attempts.append(name)
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", one)
            if attempts.count(name) == 1:
                await both_hold_one.wait()
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", other)
            return name

        return work

    results = await asyncio.gather(
        db.in_tenant_transaction(tenant_id, crossing("a", first, second)),
        db.in_tenant_transaction(tenant_id, crossing("b", second, first)),
    )
    assert sorted(results) == ["a", "b"]
    # PostgreSQL broke the deadlock by rolling one back; that one ran again.
    assert len(attempts) == 3


async def test_a_conflict_that_persists_is_aborted(db: Database) -> None:
    tenant_id, _, _ = await two_users(db)
    attempts = 0

    async def always_conflicts(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        # What PostgreSQL raises for a serialization failure (SQLSTATE 40001).
        await conn.execute("DO $$ BEGIN RAISE SQLSTATE '40001'; END $$")

    with pytest.raises(Aborted) as aborted:
        await db.in_tenant_transaction(tenant_id, always_conflicts)
    assert aborted.value.reason == "CONCURRENT_CHANGE"
    assert 1 < attempts <= 5
