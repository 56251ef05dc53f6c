"""The migration runner: concurrent starters are safe, re-runs apply nothing."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from services.shared.migrations import MIGRATIONS_DIR, migrate


@pytest.fixture
async def fresh_database(stack: Stack) -> AsyncIterator[str]:
    name = f"migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stack.owner_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = stack.owner_dsn.rpartition("/")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_concurrent_runs_apply_each_migration_once(fresh_database: str, stack: Stack) -> None:
    password = stack.secrets.app_role_password
    runs = await asyncio.gather(
        *(migrate(fresh_database, app_role_password=password) for _ in range(4))
    )
    versions = sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    applied = [run for run in runs if run]
    assert applied == [versions]
    assert await migrate(fresh_database, app_role_password=password) == []

    conn = await asyncpg.connect(fresh_database)
    try:
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in recorded] == versions


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


def edit_first(migrations: Path) -> None:
    first = sorted(migrations.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after release\n")


async def test_an_edited_migration_is_refused(
    fresh_database: str, stack: Stack, migrations_copy: Path
) -> None:
    password = stack.secrets.app_role_password
    await migrate(fresh_database, app_role_password=password, migrations_dir=migrations_copy)
    edit_first(migrations_copy)
    with pytest.raises(RuntimeError, match="forward-only"):
        await migrate(fresh_database, app_role_password=password, migrations_dir=migrations_copy)
