"""Audit records of a service's changes, carried to the tenant service's audit log.

The audit log belongs to the tenant service, so another service cannot write a record
in the transaction of its change directly. Each service keeps an outbox table of its
own instead (`<service>_audit_outbox`, RLS-forced, with an owner-run
`<service>_outbox_tenants()` naming the tenants with pending records): `record` writes
into it inside the change's transaction, so a change and its record commit together or
not at all, and `AuditRelay` sends the records to the tenant service
(AppendAuditEvents).

Exactly once by event id: replicas claim records with FOR UPDATE SKIP LOCKED, so two
never send one record at the same time, and the tenant service keeps each event id once,
so a record sent again after a crash between sending it and marking it relayed is a
duplicate there, not a second entry.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from grpc import aio
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from services.shared.context import current_method, current_principal, current_request_id
from services.shared.db import Database
from services.shared.protobuf import timestamp
from services.shared.relays import PeriodicRelay
from services.shared.server import Resources

Conn = "asyncpg.Connection[asyncpg.Record]"
BATCH = 500
TIMEOUT_S = 5.0
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Outbox:
    """One service's outbox: its table and the function listing tenants with pending
    records. Names go into SQL text, so only plain lower-case identifiers are taken."""

    service: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.service):
            raise ValueError(f"not a service name: {self.service!r}")

    @property
    def table(self) -> str:
        return f"{self.service}_audit_outbox"

    @property
    def pending_tenants(self) -> str:
        return f"{self.service}_outbox_tenants"


async def record(
    conn: Any,
    outbox: Outbox,
    tenant_id: uuid.UUID,
    resource: tuple[str, str],
    details: dict[str, Any],
    *,
    actor: tuple[str, str] | None = None,
    method: str | None = None,
) -> None:
    """Writes one audit record in `conn`'s transaction: the caller's change. Actor,
    method and request id are the current request's unless given (background jobs)."""
    if actor is None:
        principal = current_principal()
        actor = (principal.type.value, principal.subject_id)
    await conn.execute(
        f"""
        INSERT INTO {outbox.table} (tenant_id, event_id, actor_type, actor_id, method,
            resource_type, resource_id, request_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
        """,
        tenant_id,
        uuid.uuid4(),
        actor[0],
        actor[1],
        current_method() if method is None else method,
        resource[0],
        resource[1],
        current_request_id(),
        json.dumps(details, default=str),
    )


def start_relay(resources: Resources, outbox: Outbox, interval_s: float) -> AuditRelay:
    """Starts relaying `outbox` for the life of the process."""
    relay = AuditRelay(
        resources.db,
        outbox,
        resources.channel("tenant"),
        resources.settings.admin_token.get_secret_value(),
        interval_s,
    )
    relay.start()
    return relay


class AuditRelay(PeriodicRelay):
    """Sends an outbox's records to the tenant service every `interval_s`."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        channel: aio.Channel,
        admin_token: str,
        interval_s: float,
    ) -> None:
        super().__init__(
            "audit relay",
            "tenant",
            interval_s,
            db=db,
            pending_tenants=outbox.pending_tenants,
            batch=BATCH,
        )
        self._outbox = outbox
        self._stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)

    async def _relay_batch(self, tenant_id: uuid.UUID) -> int:
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await self._claim(conn)
            if not rows:
                return 0
            await self._stub.AppendAuditEvents(
                tenant_pb2.AppendAuditEventsRequest(
                    tenant_id=str(tenant_id), audit_events=[_event(r) for r in rows]
                ),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            )
            await self._mark_relayed(conn, [r["event_id"] for r in rows])
            return len(rows)

    async def _claim(self, conn: Any) -> list[asyncpg.Record]:
        """The oldest unrelayed records, locked; another replica skips them."""
        rows: list[asyncpg.Record] = await conn.fetch(
            f"""
            SELECT event_id, occurred_at, actor_type, actor_id, method, resource_type,
                resource_id, request_id, details
            FROM {self._outbox.table} WHERE relayed_at IS NULL
            ORDER BY occurred_at LIMIT $1 FOR UPDATE SKIP LOCKED
            """,
            BATCH,
        )
        return rows

    async def _mark_relayed(self, conn: Any, event_ids: Sequence[uuid.UUID]) -> None:
        await conn.execute(
            f"UPDATE {self._outbox.table} SET relayed_at = now() WHERE event_id = ANY($1::uuid[])",
            list(event_ids),
        )


def _event(row: asyncpg.Record) -> tenant_pb2.AuditEvent:
    return tenant_pb2.AuditEvent(
        id=str(row["event_id"]),
        event_time=timestamp(row["occurred_at"]),
        actor_type=row["actor_type"],
        actor_id=row["actor_id"],
        method=row["method"],
        resource_type=row["resource_type"],
        resource_id=row["resource_id"],
        request_id=row["request_id"],
        details={
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in json.loads(row["details"]).items()
        },
    )
