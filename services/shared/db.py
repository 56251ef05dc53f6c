"""The asyncpg pool, and transactions scoped to one tenant for row-level security."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from services.shared.context import method_var, principal_var, request_id_var
from services.shared.errors import Aborted, Unavailable

T = TypeVar("T")

# Connection-level failures worth telling the caller to retry.
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# Conflicts between concurrent transactions: the transaction is rolled back and running
# it again can succeed.
_CONFLICTS = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
_CONFLICT_ATTEMPTS = 3
# The tenant row-level security scopes to, and who asks: audit triggers (analytics'
# outbox) record the caller of the change from these, in the change's own statement.
# Set in the statement that sets the tenant, so they cost no round trip.
_SCOPE = (
    "SELECT set_config('app.tenant_id', $1, true), set_config('app.actor_type', $2, true), "
    "set_config('app.actor_id', $3, true), set_config('app.method', $4, true), "
    "set_config('app.request_id', $5, true)"
)
# PostgreSQL plans a prepared statement anew for each call while it estimates that the
# parameters' values matter; for a hot transaction of small indexed statements under
# row-level security that planning can cost more than running them. Set with the scope.
_SCOPE_GENERIC_PLANS = _SCOPE + ", set_config('plan_cache_mode', 'force_generic_plan', true)"


def _caller() -> tuple[str, str, str, str]:
    """Actor type and id, gRPC method and request id of the current request; empty
    outside one (background jobs)."""
    principal = principal_var.get()
    return (
        principal.type.value if principal else "",
        principal.subject_id if principal else "",
        method_var.get().lstrip("/"),
        request_id_var.get(),
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
    async def tenant_transaction(
        self, tenant_id: uuid.UUID, *, generic_plans: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees and writes only `tenant_id`'s rows.

        The settings are transaction-local, so a pooled connection never carries one
        tenant's identity into another request. `generic_plans`: every statement runs
        the plan made once for any parameter values; only for statements whose best
        plan does not depend on them.
        """
        scope = _SCOPE_GENERIC_PLANS if generic_plans else _SCOPE
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(scope, str(tenant_id), *_caller())
                yield conn
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc
        except _CONFLICTS as exc:
            raise _aborted(exc) from exc

    async def in_tenant_transaction(
        self, tenant_id: uuid.UUID, work: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """`work` in a tenant transaction, run again (a bounded number of times) when
        PostgreSQL rolled it back for a deadlock or serialization failure. `work` must
        do nothing but database work, as it may run more than once."""
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                async with self.tenant_transaction(tenant_id) as conn:
                    return await work(conn)
            except Aborted:
                if attempt == _CONFLICT_ATTEMPTS:
                    raise
                # Jitter, so the transactions that collided do not collide again.
                await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

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
        except _CONFLICTS as exc:
            raise _aborted(exc) from exc


def _aborted(exc: Exception) -> Aborted:
    return Aborted(
        "the request collided with a concurrent change; try again",
        reason="CONCURRENT_CHANGE",
        metadata={"cause": type(exc).__name__},
    )
