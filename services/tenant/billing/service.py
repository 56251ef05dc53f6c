"""Billing operations: each checks its rules, calls Stripe, and records the result
with its audit entry in one tenant transaction. Nothing here knows gRPC."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import stripe

from services.shared.auth import Principal
from services.shared.context import current_method, current_request_id
from services.shared.db import Database
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.tenant import repository as tenant_repo
from services.tenant.billing import repository as repo
from services.tenant.billing.account import BillingAccount, BillingStatus, billing_status
from services.tenant.billing.ingest_usage import IngestUsage
from services.tenant.billing.plans import (
    FREE,
    OVERAGE_UNIT,
    PLANS,
    Plan,
    SubscriptionState,
)
from services.tenant.billing.stripe_api import (
    StripeBilling,
    StripeInvoice,
    StripeSubscription,
    plan_for_stripe_id,
)
from services.tenant.domain import Tenant, tenant_scope, utcnow

log = logging.getLogger("podmesh.tenant.billing")

_STATES = {
    "active": SubscriptionState.ACTIVE,
    "trialing": SubscriptionState.ACTIVE,
    "past_due": SubscriptionState.PAST_DUE,
    "unpaid": SubscriptionState.PAST_DUE,
    # The first payment has not gone through yet.
    "incomplete": SubscriptionState.PAST_DUE,
    "canceled": SubscriptionState.CANCELED,
    "incomplete_expired": SubscriptionState.CANCELED,
}
_HANDLED_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
    }
)


@dataclass(frozen=True)
class Usage:
    period_start: datetime
    period_end: datetime
    plan: Plan
    counted: int
    overage: int
    projected_bill: int
    reported: int


def month_of(now: datetime) -> date:
    return date(now.year, now.month, 1)


def _month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _overage_cost(plan: Plan, counted: int) -> int:
    return plan.bill(counted)[1] - plan.monthly_price


def _plan(name: str) -> Plan:
    plan = PLANS.get(name.strip().lower())
    if plan is None:
        raise InvalidArgument.field("plan", f"must be one of {', '.join(PLANS)}")
    return plan


def _apply_subscription(account: BillingAccount, sub: StripeSubscription) -> BillingAccount:
    """The account as Stripe's current subscription object says, whatever event
    brought it: a late or repeated event cannot move the state backwards."""
    state = _STATES.get(sub.status, account.state)
    past_due_since = (
        (account.past_due_since or utcnow()) if state is SubscriptionState.PAST_DUE else None
    )
    plan = plan_for_stripe_id(sub.plan_id) or account.plan
    return replace(
        account,
        plan=plan,
        state=state,
        stripe_subscription_id=sub.id,
        current_period_start=sub.current_period_start,
        current_period_end=sub.current_period_end,
        past_due_since=past_due_since,
        pending_plan=None if state is SubscriptionState.CANCELED else account.pending_plan,
    )


class Billing:
    def __init__(
        self,
        db: Database,
        stripe_api: StripeBilling,
        webhook_secret: str,
        webhook_tolerance_s: int,
        grace: timedelta,
        ingest_usage: IngestUsage,
    ) -> None:
        self._db = db
        self._ingest_usage = ingest_usage
        self._stripe = stripe_api
        self._webhook_secret = webhook_secret
        self._tolerance_s = webhook_tolerance_s
        self._grace = grace

    def status(self, account: BillingAccount, tenant: Tenant) -> BillingStatus:
        return billing_status(account, tenant.quota, utcnow(), self._grace)

    async def tenant_status(self, tenant: Tenant) -> BillingStatus:
        async with self._db.tenant_transaction(tenant.id) as conn:
            account = await repo.get_account(conn, tenant.id)
        return self.status(account, tenant)

    async def _load(self, tenant_id: uuid.UUID) -> tuple[Tenant, BillingAccount]:
        async with self._db.tenant_transaction(tenant_id) as conn:
            tenant = await tenant_repo.get_tenant(conn, tenant_id)
            if tenant is None:
                raise NotFound("tenant", str(tenant_id))
            return tenant, await repo.get_account(conn, tenant_id)

    async def _commit(
        self,
        principal_actor: tuple[str, str],
        account: BillingAccount,
        operation: str,
        details: dict[str, Any],
    ) -> None:
        async with self._db.tenant_transaction(account.tenant_id) as conn:
            await repo.save_account(conn, account)
            await repo.claim_request(conn, account.tenant_id, current_request_id(), operation)
            await tenant_repo.insert_audit_event(
                conn,
                account.tenant_id,
                principal_actor,
                current_method(),
                ("billing_account", str(account.tenant_id)),
                current_request_id(),
                details,
            )

    def _key(self, tenant_id: uuid.UUID, operation: str) -> str:
        return f"podmesh-{tenant_id}-{operation}-{current_request_id()}"

    async def start(
        self, principal: Principal, tenant_id: uuid.UUID, plan_name: str, payment_method: str
    ) -> BillingStatus:
        tenant_id = tenant_scope(principal, tenant_id)
        plan = _plan(plan_name)
        tenant, account = await self._load(tenant_id)
        if await self._already(tenant_id):
            return self.status(account, tenant)
        if account.state in (SubscriptionState.ACTIVE, SubscriptionState.PAST_DUE):
            raise FailedPrecondition(
                "the tenant already has a subscription: change its plan instead",
                reason="SUBSCRIPTION_EXISTS",
            )
        actor = (principal.type.value, principal.subject_id)
        if not plan.paid:
            account = replace(
                account,
                plan=plan,
                state=SubscriptionState.NONE,
                stripe_subscription_id=None,
                pending_plan=None,
                past_due_since=None,
            )
            await self._commit(actor, account, "start", {"plan": plan.name})
            return self.status(account, tenant)
        customer = account.stripe_customer_id
        if customer is None:
            # One customer per tenant, whatever the request: the key is the tenant's.
            customer = await self._stripe.create_customer(
                str(tenant_id), tenant.display_name, payment_method, f"podmesh-customer-{tenant_id}"
            )
            account = replace(account, stripe_customer_id=customer)
            async with self._db.tenant_transaction(tenant_id) as conn:
                await repo.save_account(conn, account)
        sub = await self._stripe.create_subscription(
            customer, plan, str(tenant_id), self._key(tenant_id, "subscribe")
        )
        account = _apply_subscription(replace(account, plan=plan, pending_plan=None), sub)
        await self._commit(
            actor,
            account,
            "start",
            {"plan": plan.name, "stripe_subscription_id": sub.id, "state": account.state.value},
        )
        return self.status(account, tenant)

    async def _already(self, tenant_id: uuid.UUID) -> bool:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT true FROM billing_requests WHERE request_id = $1",
                    current_request_id(),
                )
            )

    async def change_plan(
        self, principal: Principal, tenant_id: uuid.UUID, plan_name: str
    ) -> BillingStatus:
        tenant_id = tenant_scope(principal, tenant_id)
        plan = _plan(plan_name)
        tenant, account = await self._load(tenant_id)
        if await self._already(tenant_id):
            return self.status(account, tenant)
        if account.state is not SubscriptionState.ACTIVE or not account.stripe_subscription_id:
            raise FailedPrecondition(
                "only an active subscription can change plan: start one first",
                reason="NO_ACTIVE_SUBSCRIPTION",
            )
        actor = (principal.type.value, principal.subject_id)
        if plan.rank >= account.plan.rank:
            if plan != account.plan:
                current = await self._stripe.subscription(account.stripe_subscription_id)
                sub = await self._stripe.change_plan(current, plan, self._key(tenant_id, "upgrade"))
                account = _apply_subscription(account, sub)
            account = replace(account, plan=plan, pending_plan=None)
            details = {"plan": plan.name, "effective": "now"}
        else:
            account = replace(account, pending_plan=plan)
            end = account.current_period_end
            details = {
                "pending_plan": plan.name,
                "effective": end.isoformat() if end else "period end",
            }
        await self._commit(actor, account, "change_plan", details)
        return self.status(account, tenant)

    async def cancel(self, principal: Principal, tenant_id: uuid.UUID) -> BillingStatus:
        tenant_id = tenant_scope(principal, tenant_id)
        tenant, account = await self._load(tenant_id)
        if await self._already(tenant_id):
            return self.status(account, tenant)
        if account.state is SubscriptionState.CANCELED or not account.stripe_subscription_id:
            raise FailedPrecondition(
                "the tenant has no subscription to cancel", reason="NO_ACTIVE_SUBSCRIPTION"
            )
        sub = await self._stripe.cancel(
            account.stripe_subscription_id, self._key(tenant_id, "cancel")
        )
        account = _apply_subscription(account, sub)
        await self._commit(
            (principal.type.value, principal.subject_id),
            account,
            "cancel",
            {"state": account.state.value},
        )
        return self.status(account, tenant)

    async def apply_due_downgrade(self, tenant_id: uuid.UUID) -> None:
        """Moves a subscription to its pending (lower) plan once the paid period is over."""
        _, account = await self._load(tenant_id)
        pending, end = account.pending_plan, account.current_period_end
        subscription_id = account.stripe_subscription_id
        if pending is None or end is None or utcnow() < end or subscription_id is None:
            return
        period = int(end.timestamp())
        if pending == FREE:
            sub = await self._stripe.cancel(
                subscription_id, f"podmesh-{tenant_id}-downgrade-{period}"
            )
            account = replace(
                _apply_subscription(account, sub),
                plan=FREE,
                state=SubscriptionState.NONE,
                stripe_subscription_id=None,
            )
        else:
            current = await self._stripe.subscription(subscription_id)
            sub = await self._stripe.change_plan(
                current, pending, f"podmesh-{tenant_id}-downgrade-{period}"
            )
            account = _apply_subscription(account, sub)
        account = replace(account, pending_plan=None)
        await self._commit(("system", "billing"), account, "downgrade", {"plan": pending.name})

    # Webhooks

    async def handle_webhook(self, payload: bytes, signature: str) -> None:
        if not self._webhook_secret:
            raise FailedPrecondition(
                "Stripe webhooks are not configured on this platform",
                reason="BILLING_NOT_CONFIGURED",
            )
        try:
            event = stripe.Webhook.construct_event(
                payload, signature, self._webhook_secret, tolerance=self._tolerance_s
            ).to_dict()
        except stripe.SignatureVerificationError:
            raise InvalidArgument.field(
                "Stripe-Signature",
                "does not match the body, or is too old",
                reason="WEBHOOK_SIGNATURE_INVALID",
            ) from None
        except ValueError:
            raise InvalidArgument.field(
                "body", "is not a Stripe event", reason="WEBHOOK_PAYLOAD_INVALID"
            ) from None
        if event["type"] not in _HANDLED_EVENTS:
            return
        obj = event["data"]["object"]
        customer = obj.get("customer")
        if not isinstance(customer, str):
            return
        async with self._db.platform_transaction() as conn:
            tenant_id = await repo.tenant_for_customer(conn, customer)
        if tenant_id is None:
            log.info("Stripe event %s names an unknown customer", event["id"])
            return
        _, account = await self._load(tenant_id)
        sub: StripeSubscription | None = None
        if account.stripe_subscription_id:
            # Stripe's current object, not the event's copy: events may arrive late or
            # out of order, the object's state is always the latest.
            sub = await self._stripe.subscription(account.stripe_subscription_id)
        async with self._db.tenant_transaction(tenant_id) as conn:
            if not await repo.claim_event(conn, tenant_id, event["id"], event["type"]):
                return
            current = await repo.get_account(conn, tenant_id, lock=True)
            updated = _apply_subscription(current, sub) if sub else current
            await repo.save_account(conn, updated)
            await tenant_repo.insert_audit_event(
                conn,
                tenant_id,
                ("stripe", event["id"]),
                current_method(),
                ("billing_account", str(tenant_id)),
                current_request_id(),
                {
                    "event_type": event["type"],
                    "state": updated.state.value,
                    "plan": updated.plan.name,
                },
            )

    # Invoices and usage

    async def invoices(
        self, principal: Principal, tenant_id: uuid.UUID, limit: int
    ) -> list[StripeInvoice]:
        tenant_id = tenant_scope(principal, tenant_id)
        _, account = await self._load(tenant_id)
        if account.stripe_customer_id is None:
            return []
        return await self._stripe.invoices(account.stripe_customer_id, limit)

    async def usage(self, principal: Principal, tenant_id: uuid.UUID) -> Usage:
        tenant_id = tenant_scope(principal, tenant_id)
        month = month_of(utcnow())
        async with self._db.tenant_transaction(tenant_id) as conn:
            if await tenant_repo.get_tenant(conn, tenant_id) is None:
                raise NotFound("tenant", str(tenant_id))
            account = await repo.get_account(conn, tenant_id)
            reported = await repo.reported_total(conn, month)
        # Asked after the transaction, which holds no connection across the call.
        counted = await self._ingest_usage.accepted_events(tenant_id, month)
        overage, bill = account.plan.bill(counted)
        start, end = _month_bounds(month)
        return Usage(start, end, account.plan, counted, overage, bill, reported)

    async def report_usage(self, *, record_only: bool = False) -> tuple[int, int]:
        """Records each subscribed tenant's newly counted events, then reports every
        recorded row Stripe does not have yet. (rows recorded, rows reported).

        Without analytics, what was recorded before is still reported, and then
        Unavailable is raised: the reporter records the rest next round."""
        async with self._db.platform_transaction() as conn:
            tenants = await repo.subscribed_tenants(conn)
        recorded = reported = 0
        unavailable: Unavailable | None = None
        for tenant_id in tenants:
            await self.apply_due_downgrade(tenant_id)
            try:
                recorded += await self._record(tenant_id)
            except Unavailable as error:
                unavailable = error
            if not record_only:
                reported += await self._report(tenant_id)
        if unavailable is not None:
            raise unavailable
        return recorded, reported

    async def _record(self, tenant_id: uuid.UUID) -> int:
        month = month_of(utcnow())
        # Read before the lock, not under it: the count only grows, so a recorder that
        # read less than another already recorded records nothing.
        counted = await self._ingest_usage.accepted_events(tenant_id, month)
        async with self._db.tenant_transaction(tenant_id) as conn:
            # One recorder at a time per tenant: the sequence numbers stay dense.
            await repo.get_account(conn, tenant_id, lock=True)
            already, sequence = await repo.recorded_usage(conn, month)
            if counted <= already:
                return 0
            await repo.record_usage(
                conn, tenant_id, month, sequence + 1, counted, counted - already
            )
        return 1

    async def _report(self, tenant_id: uuid.UUID) -> int:
        _, account = await self._load(tenant_id)
        customer, subscription = account.stripe_customer_id, account.stripe_subscription_id
        if customer is None or subscription is None:
            return 0
        done = 0
        async with self._db.tenant_transaction(tenant_id) as conn:
            # One reporter per tenant at a time, across replicas: the look-up below and
            # the report after it must not interleave with another's.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('billing-usage:' || $1::text))",
                str(tenant_id),
            )
            for period, sequence, events, total in await repo.unreported_usage(conn):
                key = f"podmesh-usage-{tenant_id}-{period.isoformat()}-{sequence}"
                # A crash after Stripe took the row but before it was marked leaves the
                # item in Stripe under this key: find it rather than add it twice.
                reference = await self._stripe.usage_reported(customer, key)
                if reference is None:
                    amount = _overage_cost(account.plan, total) - _overage_cost(
                        account.plan, total - events
                    )
                    reference = await self._stripe.report_usage(
                        customer,
                        subscription,
                        events,
                        amount,
                        f"{events:,} events ({total:,} this month; overage per "
                        f"{OVERAGE_UNIT:,} beyond {account.plan.included_events:,})",
                        key,
                    )
                await repo.mark_reported(conn, period, sequence, reference, utcnow())
                done += 1
        return done
