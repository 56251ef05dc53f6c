"""The asyncpg pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from services.shared.errors import Unavailable

# Connection-level failures worth telling the caller to retry.
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


async def _reset(conn: asyncpg.Connection) -> None:
    """Readies a released connection for its next user.

    asyncpg's default also runs RESET ALL, UNLISTEN *, CLOSE ALL and an advisory unlock:
    one more round trip per transaction, for session state nothing here sets. The pool
    is used only through the transactions below, whose tenant identity and settings are
    transaction-local and whose advisory locks are transaction-level; a transaction left
    open by a failure is still rolled back.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Database:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> Database:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": "podmesh"},
            reset=_reset,
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees and writes only `tenant_id`'s rows.

        The setting is transaction-local, so a pooled connection never carries one
        tenant's identity into another request.
        """
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
                yield conn
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc

    async def fetchval(self, query: str, *args: object) -> Any:
        """One statement in a transaction of its own: for functions that scope themselves
        to a tenant (e.g. tenant_counting_version). Without a tenant, row-level security
        shows a plain query on a tenant table nothing."""
        try:
            return await self.pool.fetchval(query, *args)
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def platform_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction with no tenant: it sees no tenant rows, only what the
        narrow SECURITY DEFINER functions of the schema return."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc
