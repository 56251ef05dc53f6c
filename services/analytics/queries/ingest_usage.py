"""The events ingestion accepted per tenant and UTC month (GetIngestUsage): the count
ingestion keeps in ingest_usage to check the monthly quota, read for the tenant
service's billing, which meters exactly what the quota counted."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from services.shared.db import Database
from services.shared.validation import Violations

MIN_YEAR = 2000
MAX_YEAR = 9999


@dataclass(frozen=True)
class IngestUsage:
    period_start: datetime
    period_end: datetime
    accepted_events: int


def month_start(year: int, month: int) -> date:
    v = Violations()
    v.check(MIN_YEAR <= year <= MAX_YEAR, "year", f"from {MIN_YEAR} to {MAX_YEAR}")
    v.check(1 <= month <= 12, "month", "from 1 to 12")
    v.raise_if_any()
    return date(year, month, 1)


class IngestUsageReader:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def usage(self, tenant_id: uuid.UUID, month: date) -> IngestUsage:
        async with self._db.tenant_transaction(tenant_id) as conn:
            events = await conn.fetchval(
                "SELECT events FROM ingest_usage WHERE tenant_id = app_tenant_id() AND month = $1",
                month,
            )
        next_month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        return IngestUsage(
            period_start=datetime(month.year, month.month, 1, tzinfo=UTC),
            period_end=datetime(next_month.year, next_month.month, 1, tzinfo=UTC),
            accepted_events=int(events or 0),
        )
