"""Migration 0068 gives downloads counted before it their households, also when the
tables' owner is no superuser (forced row-level security would hide every row)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from services.shared.migrations import MIGRATIONS_DIR, migrate

MIGRATION = "0068_analytics_download_households"
TABLES = ("downloads", "ad_deliveries", "listener_requests")


@pytest.fixture
async def database_before(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """A new database migrated up to the migration before 0068."""
    name = f"lift_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.owner_dsn)
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.stem < MIGRATION:
            shutil.copy(path, earlier / path.name)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = stack.owner_dsn.rpartition("/")
        dsn = f"{base}/{name}"
        await migrate(
            dsn, app_role_password=stack.secrets.app_role_password, migrations_dir=earlier
        )
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_households_are_backfilled_from_ad_deliveries_and_raw_requests(
    database_before: str,
) -> None:
    tenant = uuid.uuid4()
    episode, podcast, slot = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC).replace(microsecond=0)
    window = now.replace(hour=0, minute=0, second=0)
    with_ads, raw_only, gone = b"L" * 16, b"M" * 16, b"N" * 16
    h_ads, h_raw = b"a" * 16, b"r" * 16
    owner = f"lift_owner_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_before)
    try:
        await conn.execute("SELECT analytics_ensure_request_partitions($1, $1)", now.date())
        for listener in (with_ads, raw_only, gone):
            await conn.execute(
                """
                INSERT INTO downloads (tenant_id, episode_id, listener_id, window_start,
                    podcast_id, download_time, user_agent_lists)
                VALUES ($1, $2, $3, $4, $5, $6, 'test')
                """,
                tenant, episode, listener, window, podcast, now,
            )  # fmt: skip
        await conn.execute(
            """
            INSERT INTO ad_deliveries (tenant_id, episode_id, listener_id, window_start,
                ad_slot_id, podcast_id, delivered_time, household_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            tenant, episode, with_ads, window, slot, podcast, now, h_ads,
        )  # fmt: skip
        for i, (listener, household) in enumerate(
            ((raw_only, h_raw), (raw_only, h_raw), (b"O" * 16, b"o" * 16))
        ):
            await conn.execute(
                """
                INSERT INTO listener_requests (tenant_id, request_time, episode_id,
                    bytes_served, status_code, ip_excluded, request_id, listener_id,
                    household_id, http_method, range_header, user_agent, referer,
                    country_code, region_code)
                VALUES ($1, $2, $3, 1000, 200, false, $4, $5, $6, 'GET', '', 'ua', '', 'US', '')
                """,
                tenant, now + timedelta(seconds=i), episode, f"r{i}", listener, household,
            )  # fmt: skip
        # The tables belong to an owner that is no superuser, which runs the migration.
        await conn.execute(f'CREATE ROLE "{owner}" NOLOGIN NOSUPERUSER NOBYPASSRLS')
        await conn.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{owner}"')
        for table in TABLES:
            await conn.execute(f'ALTER TABLE {table} OWNER TO "{owner}"')
        sql = (MIGRATIONS_DIR / f"{MIGRATION}.sql").read_text()
        async with conn.transaction():
            await conn.execute(f'SET LOCAL ROLE "{owner}"')
            await conn.execute(sql)

        found = {
            r["listener_id"]: r["household_id"]
            for r in await conn.fetch("SELECT listener_id, household_id FROM downloads")
        }
        assert found == {with_ads: h_ads, raw_only: h_raw, gone: None}
        forced = await conn.fetch(
            "SELECT relname, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
            list(TABLES),
        )
        assert {r["relname"]: r["relforcerowsecurity"] for r in forced} == dict.fromkeys(
            TABLES, True
        )
    finally:
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner):
            await conn.execute(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER')
            await conn.execute(f'DROP OWNED BY "{owner}"')
            await conn.execute(f'DROP ROLE "{owner}"')
        await conn.close()
