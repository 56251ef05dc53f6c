"""The tenant's attribution version: what the report cache checks before reusing a report.

Every transaction that stores exposures or site events calls `bump_version` in that same
transaction, so the version changes exactly when the rows a report reads do, and a
report computed at version v (read before its own transaction started) is exact for as
long as the version is still v.
"""

from __future__ import annotations

import uuid

import asyncpg

from services.shared.db import Database

_BUMP = """
INSERT INTO attribution_versions AS v (tenant_id, version)
VALUES (app_tenant_id(), 1)
ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1
"""


async def bump_version(conn: asyncpg.Connection) -> None:
    """Call in a tenant transaction that stored exposures or site events."""
    await conn.execute(_BUMP)


async def current_version(db: Database, tenant_id: uuid.UUID) -> int:
    version: int = await db.fetchval("SELECT tenant_attribution_version($1)", tenant_id)
    return version
