"""Background relays: a loop that carries what a service wrote to its outbox to the
peer that owns it, every interval for the life of the process (audit records to the
tenant service, counted ad deliveries to attribution), tenant by tenant, a batch at a
time.

A relay never gives up: rows stay in the outbox until the peer acknowledged them, and
the next round tries again. A peer that went away is logged once, when it does, and
once more when it answers again, not every round in between.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import uuid

import grpc

from services.shared.db import Database

log = logging.getLogger("podmesh.relays")
# The relays' tasks: the event loop keeps only a weak reference to a task.
_running: set[asyncio.Task[None]] = set()


class PeriodicRelay(abc.ABC):
    def __init__(
        self,
        name: str,
        peer: str,
        interval_s: float,
        *,
        db: Database,
        pending_tenants: str,
        batch: int,
    ) -> None:
        """`pending_tenants` names the SQL function listing the tenants with rows to
        send; `batch` is the most rows `_relay_batch` sends at once."""
        self._name = name
        self._peer = peer
        self._interval_s = interval_s
        self._degraded = False
        self._db = db
        self._pending_tenants = pending_tenants
        self._batch = batch

    @abc.abstractmethod
    async def _relay_batch(self, tenant_id: uuid.UUID) -> int:
        """Sends the tenant's oldest pending rows, at most a batch; returns how many."""

    async def relay(self) -> int:
        """Sends everything pending; returns how many records this round sent."""
        async with self._db.platform_transaction() as conn:
            rows = await conn.fetch(f"SELECT tenant_id FROM {self._pending_tenants}()")
        sent = 0
        for tenant_id in (r["tenant_id"] for r in rows):
            while (batch := await self._relay_batch(tenant_id)) == self._batch:
                sent += batch
            sent += batch
        return sent

    def start(self) -> None:
        task = asyncio.create_task(self._loop())
        _running.add(task)
        task.add_done_callback(_running.discard)

    async def _loop(self) -> None:
        while True:
            try:
                await self.relay()
                if self._degraded:
                    log.info("%s: the %s service answers again", self._name, self._peer)
                    self._degraded = False
            except grpc.aio.AioRpcError as error:
                if not self._degraded:
                    log.warning(
                        "%s: %s service unavailable (%s)",
                        self._name,
                        self._peer,
                        error.code().name,
                    )
                    self._degraded = True
            except Exception:
                log.exception("%s failed; trying again next round", self._name)
            await asyncio.sleep(self._interval_s)
