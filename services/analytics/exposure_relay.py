"""Carries analytics' ad deliveries to the attribution service, where they become
exposures.

Counting writes them: triggers on ad_deliveries (migration 0061) put a row in
analytics_exposure_outbox for every delivery a counting transaction adds or takes
away, in that transaction. This relay sends each tenant's rows, oldest first, to
AttributionService.ApplyAdDeliveries and deletes them in the same transaction that
read them, only after attribution answered: attribution stores a batch's exposures in
one transaction of its own, keyed by download and slot, so a batch sent again (this
process killed between the answer and its commit) changes nothing there. Rows are
never lost (they stay until acknowledged) and never applied twice (the keys), which
makes delivery exactly once in effect across a crash of either side.

One relay per tenant at a time (a transaction-scoped advisory lock, taken without
waiting), so a delivery's changes reach attribution in the order counting made them
whatever the number of replicas.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from grpc import aio
from podmesh.attribution.v1 import attribution_pb2, attribution_pb2_grpc

from services.shared.db import Database
from services.shared.peers import forwarded
from services.shared.protobuf import timestamp
from services.shared.relays import PeriodicRelay

BATCH = 1_000
TIMEOUT_S = 10.0
# Namespace of the relay's advisory locks (any int4; "EXPO").
_LOCK_NAMESPACE = 0x4558504F


class ExposureRelay(PeriodicRelay):
    """Sends pending ad delivery changes to attribution every `interval_s`."""

    def __init__(
        self, db: Database, channel: aio.Channel, admin_token: str, interval_s: float
    ) -> None:
        super().__init__(
            "exposure relay",
            "attribution",
            interval_s,
            db=db,
            pending_tenants="analytics_exposure_outbox_tenants",
            batch=BATCH,
        )
        self._stub = attribution_pb2_grpc.AttributionServiceStub(channel)
        self._credentials = (("authorization", f"Bearer {admin_token}"),)

    async def _relay_batch(self, tenant_id: uuid.UUID) -> int:
        async with self._db.tenant_transaction(tenant_id) as conn:
            mine = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1::int4, hashtext($2::text))",
                _LOCK_NAMESPACE,
                str(tenant_id),
            )
            if not mine:
                return 0
            rows = await _oldest(conn)
            if not rows:
                return 0
            await self._stub.ApplyAdDeliveries(
                attribution_pb2.ApplyAdDeliveriesRequest(
                    tenant_id=str(tenant_id), changes=[_change(r) for r in rows]
                ),
                metadata=forwarded(self._credentials),
                timeout=TIMEOUT_S,
            )
            await conn.execute(
                "DELETE FROM analytics_exposure_outbox WHERE change_id = ANY($1::bigint[])",
                [r["change_id"] for r in rows],
            )
            return len(rows)


async def _oldest(conn: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT change_id, removed, episode_id, listener_id, window_start, ad_slot_id,
            podcast_id, delivered_time, household_id, country_code
        FROM analytics_exposure_outbox ORDER BY change_id LIMIT $1
        """,
        BATCH,
    )
    return rows


def _change(row: asyncpg.Record) -> attribution_pb2.AdDeliveryChange:
    return attribution_pb2.AdDeliveryChange(
        episode_id=str(row["episode_id"]),
        listener_id=bytes(row["listener_id"]),
        window_start_time=timestamp(row["window_start"]),
        ad_slot_id=str(row["ad_slot_id"]),
        removed=row["removed"],
        podcast_id=str(row["podcast_id"]),
        delivered_time=timestamp(row["delivered_time"]),
        household_id=bytes(row["household_id"]),
        country_code=row["country_code"],
    )
