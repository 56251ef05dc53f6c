"""What PostgreSQL runs for a booking: its transaction uses one generic plan per
statement, and those plans probe indexes (the request id's, a slot's B-tree of
migration 0056) whatever the table's statistics say, never a tenant's placements
one by one. (Which index a competitor probe takes follows the statistics, as it should.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from devstack.stack import Stack
from services.campaign.repository import BOOKING_CHECKS, BOOKING_LOOKUP
from services.shared.db import Database


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = await Database.connect(stack.app_dsn, min_size=1, max_size=1)
    try:
        yield database
    finally:
        await database.close()


async def test_generic_plans_last_for_their_transaction_only(db: Database) -> None:
    tenant_id = uuid.uuid4()
    show = "SELECT current_setting('plan_cache_mode')"
    async with db.tenant_transaction(tenant_id, generic_plans=True) as conn:
        assert await conn.fetchval(show) == "force_generic_plan"
    async with db.tenant_transaction(tenant_id) as conn:
        assert await conn.fetchval(show) == "auto"


def literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


async def generic_plan(db: Database, query: str, types: str, args: list[str]) -> str:
    """The generic plan of `query` for these arguments, as the app role sees it."""
    async with db.tenant_transaction(uuid.uuid4(), generic_plans=True) as conn:
        name = f"p{uuid.uuid4().hex}"
        await conn.execute(f"PREPARE {name} ({types}) AS {query}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE {name} ({', '.join(args)})")
    return "\n".join(r[0] for r in rows)


async def test_the_lookup_finds_a_request_id_through_its_index(db: Database) -> None:
    plan = await generic_plan(
        db, BOOKING_LOOKUP, "uuid, text", [literal(uuid.uuid4()), literal("req-1")]
    )
    assert "placements_request_id" in plan
    assert "Seq Scan on placements" not in plan


async def test_the_checks_probe_b_trees(db: Database) -> None:
    start = datetime.now(UTC)
    plan = await generic_plan(
        db,
        BOOKING_CHECKS,
        "uuid, text, uuid[], uuid, text, timestamptz, timestamptz, uuid",
        [
            literal(uuid.uuid4()),
            literal("req-1"),
            f"ARRAY[{literal(uuid.uuid4())}]::uuid[]",
            literal(uuid.uuid4()),
            literal("meal kits"),
            literal(start.isoformat()),
            literal((start + timedelta(days=1)).isoformat()),
            literal(uuid.uuid4()),
        ],
    )
    assert "placements_request_id" in plan
    assert "placements_slot_running" in plan
    assert "Seq Scan on placements" not in plan
    assert "placements_slot_taken" not in plan
