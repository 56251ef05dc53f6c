"""A tenant's billing account and what its state allows; no gRPC, no SQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.tenant.billing.plans import MANAGED, Plan, PlanQuota, SubscriptionState
from services.tenant.billing.plans import effective_quota as resolve_quota
from services.tenant.domain import Quota

SUBSCRIPTION_INACTIVE = "SUBSCRIPTION_INACTIVE"
SUBSCRIPTION_PAST_DUE = "SUBSCRIPTION_PAST_DUE"


@dataclass(frozen=True)
class BillingAccount:
    tenant_id: uuid.UUID
    plan: Plan = MANAGED
    state: SubscriptionState = SubscriptionState.NONE
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    pending_plan: Plan | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    past_due_since: datetime | None = None


@dataclass(frozen=True)
class BillingStatus:
    """What the account's state means right now, as GetTenant shows it."""

    account: BillingAccount
    quota: PlanQuota
    ingestion_allowed: bool
    # SUBSCRIPTION_PAST_DUE while ingestion still runs, SUBSCRIPTION_INACTIVE once not.
    reason: str
    message: str
    grace_end: datetime | None


def billing_warning(account: BillingAccount, now: datetime, grace: timedelta) -> str:
    """What the tenant must do about its billing, shown with every response; empty when
    nothing."""
    return billing_status(account, Quota(), now, grace).message


def billing_status(
    account: BillingAccount, overrides: Quota, now: datetime, grace: timedelta
) -> BillingStatus:
    quota = resolve_quota(account.plan, overrides)
    if account.state is SubscriptionState.CANCELED:
        return BillingStatus(
            account,
            quota,
            False,
            SUBSCRIPTION_INACTIVE,
            "the subscription is canceled: ingestion is stopped, reports still work; "
            "start a subscription to resume",
            None,
        )
    if account.state is SubscriptionState.PAST_DUE:
        grace_end = (account.past_due_since or now) + grace
        if now < grace_end:
            return BillingStatus(
                account,
                quota,
                True,
                SUBSCRIPTION_PAST_DUE,
                f"payment is past due: ingestion stops at {grace_end.isoformat()} "
                "unless the invoice is paid",
                grace_end,
            )
        return BillingStatus(
            account,
            quota,
            False,
            SUBSCRIPTION_INACTIVE,
            "payment is past due beyond the grace period: ingestion is stopped, reports "
            "still work; pay the open invoice to resume",
            grace_end,
        )
    return BillingStatus(account, quota, True, "", "", None)
