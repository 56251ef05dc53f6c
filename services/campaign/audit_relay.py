"""Relays the campaign service's audit records to the tenant's audit log.

Every change writes its audit record into campaign_audit_outbox in the change's own
transaction, so a change and its record commit together or not at all. This relay
sends the records to the tenant service (AppendAuditEvents), which keeps each event
id once: a record sent again after a crash between sending and marking it relayed is
a duplicate there, not a second entry. Replicas claim records with SKIP LOCKED, so
they never send the same record at the same time."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import grpc
from grpc import aio
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from services.campaign import repository as repo
from services.shared.db import Database
from services.shared.protobuf import timestamp

log = logging.getLogger("podmesh.campaign.audit")
BATCH = 500
TIMEOUT_S = 5.0


class AuditRelay:
    def __init__(
        self, db: Database, channel: aio.Channel, admin_token: str, interval_s: float
    ) -> None:
        self._db = db
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)
        self._interval_s = interval_s
        self._degraded = False
        # Held here because the event loop keeps only a weak reference to tasks.
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.relay()
                if self._degraded:
                    log.info("audit relay: the tenant service answers again")
                    self._degraded = False
            except grpc.aio.AioRpcError as error:
                if not self._degraded:
                    log.warning("audit relay: tenant service unavailable (%s)", error.code().name)
                    self._degraded = True
            except Exception:
                log.exception("audit relay failed; trying again next round")
            await asyncio.sleep(self._interval_s)

    async def relay(self) -> int:
        """Sends every pending record; returns how many were sent."""
        async with self._db.platform_transaction() as conn:
            tenants = await repo.outbox_tenants(conn)
        sent = 0
        for tenant_id in tenants:
            while (batch := await self._relay_batch(tenant_id)) == BATCH:
                sent += batch
            sent += batch
        return sent

    async def _relay_batch(self, tenant_id: uuid.UUID) -> int:
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.claim_outbox(conn, BATCH)
            if not rows:
                return 0
            await self._stub.AppendAuditEvents(
                tenant_pb2.AppendAuditEventsRequest(
                    tenant_id=str(tenant_id),
                    audit_events=[
                        tenant_pb2.AuditEvent(
                            id=str(r["event_id"]),
                            event_time=timestamp(r["occurred_at"]),
                            actor_type=r["actor_type"],
                            actor_id=r["actor_id"],
                            method=r["method"],
                            resource_type=r["resource_type"],
                            resource_id=r["resource_id"],
                            request_id=r["request_id"],
                            details={
                                k: v if isinstance(v, str) else json.dumps(v)
                                for k, v in json.loads(r["details"]).items()
                            },
                        )
                        for r in rows
                    ],
                ),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            )
            await repo.mark_relayed(conn, [r["event_id"] for r in rows])
            return len(rows)
