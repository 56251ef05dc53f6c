"""SQL for billing; every function runs in a transaction the caller opened."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import TypeAlias

import asyncpg

from services.tenant.billing.account import BillingAccount
from services.tenant.billing.plans import SubscriptionState, plan_named

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

_COLUMNS = """tenant_id, plan, subscription_state, stripe_customer_id, stripe_subscription_id,
    pending_plan, current_period_start, current_period_end, past_due_since"""


def _account(row: asyncpg.Record) -> BillingAccount:
    return BillingAccount(
        tenant_id=row["tenant_id"],
        plan=plan_named(row["plan"]),
        state=SubscriptionState(row["subscription_state"]),
        stripe_customer_id=row["stripe_customer_id"],
        stripe_subscription_id=row["stripe_subscription_id"],
        pending_plan=plan_named(row["pending_plan"]) if row["pending_plan"] else None,
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        past_due_since=row["past_due_since"],
    )


async def get_account(conn: Conn, tenant_id: uuid.UUID, *, lock: bool = False) -> BillingAccount:
    """The tenant's account; a tenant without one is on the managed plan."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM billing_accounts WHERE tenant_id = $1"
        + (" FOR UPDATE" if lock else ""),
        tenant_id,
    )
    return _account(row) if row else BillingAccount(tenant_id=tenant_id)


async def save_account(conn: Conn, account: BillingAccount) -> None:
    await conn.execute(
        """
        INSERT INTO billing_accounts (tenant_id, plan, subscription_state, stripe_customer_id,
            stripe_subscription_id, pending_plan, current_period_start, current_period_end,
            past_due_since)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (tenant_id) DO UPDATE SET
            plan = EXCLUDED.plan,
            subscription_state = EXCLUDED.subscription_state,
            stripe_customer_id = EXCLUDED.stripe_customer_id,
            stripe_subscription_id = EXCLUDED.stripe_subscription_id,
            pending_plan = EXCLUDED.pending_plan,
            current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end,
            past_due_since = EXCLUDED.past_due_since,
            updated_at = now()
        """,
        account.tenant_id,
        account.plan.name,
        account.state.value,
        account.stripe_customer_id,
        account.stripe_subscription_id,
        account.pending_plan.name if account.pending_plan else None,
        account.current_period_start,
        account.current_period_end,
        account.past_due_since,
    )


async def claim_request(conn: Conn, tenant_id: uuid.UUID, request_id: str, operation: str) -> bool:
    """False when this request id was answered before."""
    status = await conn.execute(
        """
        INSERT INTO billing_requests (tenant_id, request_id, operation) VALUES ($1, $2, $3)
        ON CONFLICT DO NOTHING
        """,
        tenant_id,
        request_id,
        operation,
    )
    return bool(status.endswith(" 1"))


async def claim_event(conn: Conn, tenant_id: uuid.UUID, event_id: str, event_type: str) -> bool:
    """False when this Stripe event was applied before."""
    status = await conn.execute(
        """
        INSERT INTO billing_stripe_events (tenant_id, event_id, event_type) VALUES ($1, $2, $3)
        ON CONFLICT DO NOTHING
        """,
        tenant_id,
        event_id,
        event_type,
    )
    return bool(status.endswith(" 1"))


async def tenant_for_customer(conn: Conn, customer_id: str) -> uuid.UUID | None:
    result: uuid.UUID | None = await conn.fetchval(
        "SELECT billing_tenant_for_customer($1)", customer_id
    )
    return result


async def subscribed_tenants(conn: Conn) -> list[uuid.UUID]:
    return [r[0] for r in await conn.fetch("SELECT * FROM billing_tenants_with_subscription()")]


async def recorded_usage(conn: Conn, period_start: date) -> tuple[int, int]:
    """(events recorded for the period, the last sequence number)."""
    row = await conn.fetchrow(
        """
        SELECT coalesce(sum(events), 0) AS events, coalesce(max(sequence), 0) AS sequence
        FROM billing_usage WHERE period_start = $1
        """,
        period_start,
    )
    assert row is not None
    return int(row["events"]), int(row["sequence"])


async def record_usage(
    conn: Conn, tenant_id: uuid.UUID, period_start: date, sequence: int, total: int, events: int
) -> None:
    await conn.execute(
        """
        INSERT INTO billing_usage (tenant_id, period_start, sequence, counted_total, events)
        VALUES ($1, $2, $3, $4, $5)
        """,
        tenant_id,
        period_start,
        sequence,
        total,
        events,
    )


async def unreported_usage(conn: Conn) -> list[tuple[date, int, int, int]]:
    """(period, sequence, events, period total) recorded but not yet confirmed
    reported, oldest first."""
    rows = await conn.fetch(
        """
        SELECT period_start, sequence, events, counted_total FROM billing_usage
        WHERE reported_at IS NULL ORDER BY period_start, sequence
        """
    )
    return [(r["period_start"], r["sequence"], r["events"], r["counted_total"]) for r in rows]


async def mark_reported(
    conn: Conn, period_start: date, sequence: int, reference: str, at: datetime
) -> None:
    await conn.execute(
        """
        UPDATE billing_usage SET reported_at = $3, stripe_reference = $4
        WHERE period_start = $1 AND sequence = $2 AND reported_at IS NULL
        """,
        period_start,
        sequence,
        at,
        reference,
    )


async def reported_total(conn: Conn, period_start: date) -> int:
    value = await conn.fetchval(
        """
        SELECT coalesce(sum(events), 0) FROM billing_usage
        WHERE period_start = $1 AND reported_at IS NOT NULL
        """,
        period_start,
    )
    return int(value)
