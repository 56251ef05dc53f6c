"""The clock's changes to campaigns: flights that end complete their campaigns, line
items and placements; booked placements of active line items go live when their
flight starts.

Safe with several replicas: each tenant is swept in its own transaction under a
transaction-level advisory lock that a replica only tries to take (the one that
holds it does the work, the others skip the tenant this round), and every update
re-checks its state condition, so nothing moves twice."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from services.campaign import repository as repo
from services.shared import audit_outbox
from services.shared.db import Database

log = logging.getLogger("podmesh.campaign.sweep")
# Namespace of the per-tenant advisory lock (any int4; "CSWP").
_LOCK_NAMESPACE = 0x43535750
SWEEP_ACTOR = ("service", "campaign-sweep")
SWEEP_METHOD = "podmesh.campaign.v1.CampaignService/CompletionSweep"
_AUDITED = {
    "campaign": ("campaign", "completed"),
    "line_item": ("line_item", "completed"),
    "placement_completed": ("placement", "completed"),
    "placement_live": ("placement", "live"),
}


class Sweeper:
    def __init__(self, db: Database, interval_s: float) -> None:
        self._db = db
        self._interval_s = interval_s
        # Held here because the event loop keeps only a weak reference to tasks.
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("campaign sweep failed; trying again next round")
            await asyncio.sleep(self._interval_s)

    async def sweep(self, now: datetime | None = None) -> int:
        """One round over every tenant with due changes; returns how many resources moved."""
        now = now or datetime.now(UTC)
        async with self._db.platform_transaction() as conn:
            tenants = await repo.sweep_tenants(conn, now)
        moved = 0
        for tenant_id in tenants:
            moved += await self._sweep_tenant(tenant_id, now)
        if moved:
            log.info("campaign sweep", extra={"fields": {"moved": moved, "tenants": len(tenants)}})
        return moved

    async def _sweep_tenant(self, tenant_id: uuid.UUID, now: datetime) -> int:
        async with self._db.tenant_transaction(tenant_id) as conn:
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1::int4, hashtext($2::text))",
                _LOCK_NAMESPACE,
                str(tenant_id),
            )
            if not locked:
                return 0
            changed = await repo.sweep_tenant(conn, now)
            moved = 0
            for kind, ids in changed.items():
                resource_type, state = _AUDITED[kind]
                for resource_id in ids:
                    await audit_outbox.record(
                        conn,
                        repo.AUDIT,
                        tenant_id,
                        (resource_type, str(resource_id)),
                        {"to_state": state, "as_of": now.isoformat()},
                        actor=SWEEP_ACTOR,
                        method=SWEEP_METHOD,
                    )
                moved += len(ids)
            return moved
